"""`streamgate` on the command line: serve, check, scan, explain, pools, certs.

Nothing else in `app` imports from here.
"""
