"""Certificates: the PKI primitives, the server's TLS context and its reload, and the managed
serving certificate kept in a Secret and the webhook configurations' caBundle."""
