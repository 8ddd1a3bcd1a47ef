"""Test support: the ACR front stand-in and helpers for the local registries (hack/registries.sh)."""
