"""streamgate: an admission webhook that tells whether AKS workloads can use ACR artifact streaming."""

__version__ = "0.1.0"
