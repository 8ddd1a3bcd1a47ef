"""Media types the registry client sends and recognises (OCI image spec 1.1, Docker v2.2)."""

from __future__ import annotations

from app.core.verdicts import STREAMING_ARTIFACT_TYPE

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

# HEAD on a tag returns Docker-Content-Digest only when Accept lists the stored type: send all.
MANIFEST_ACCEPT = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})

STREAMING = STREAMING_ARTIFACT_TYPE
STREAMING_ANNOTATION_PREFIX = "streaming."
