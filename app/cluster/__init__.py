"""The Kubernetes API side: watches that keep the node inventory and namespace labels current.

What is read here is handed to the core (`app.core.nodes`) as plain values; nothing here decides.
"""
