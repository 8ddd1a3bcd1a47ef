"""The evaluation core: pure functions and values, no I/O.

A workload, its images' registry verdicts, the node pools it may land on and a policy go in;
a decision (deny, warn, annotate) comes out. Nothing here opens a socket, reads a file or the
environment, or imports a framework: the webhook, `streamgate check` and `streamgate scan` all
call it, and `make lint` checks that it stays that way (the contracts in pyproject.toml).
"""
