"""What streamgate tells operators: Prometheus metrics, structured logs, Kubernetes Events."""
