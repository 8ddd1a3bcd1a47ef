"""`make bench`: how much the webhook costs, measured (docs/benchmarks.md)."""
