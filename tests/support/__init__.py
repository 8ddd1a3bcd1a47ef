"""Test support: the ACR front stand-in and helpers for the local registries.

See docs/registries.md and hack/registries.sh.
"""
