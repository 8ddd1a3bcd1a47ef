"""streamgate: tells whether AKS workloads can use ACR artifact streaming, at admission."""

__version__ = "0.2.0"
