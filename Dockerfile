# syntax=docker/dockerfile:1
# streamgate: the admission webhook image the Helm chart runs.
#   docker build -t streamgate:dev .          (a machine with internet access)
#   make image                                (here: hack/image.sh, Docker or podman; docs/install.md)
# Two stages on the same slim base: the first installs the package into a virtualenv, the
# second copies only that virtualenv (no pip, no wheels cache, no build tools).

# The base: the official Python 3.11 image on Debian bookworm, pinned by the digest of its
# multi-platform index (Python 3.11.16, built 2026-08-25, as published in the official images'
# repo-info: repos/python/remote/3.11-slim-bookworm.md). To move to a newer build, look the
# digest up and replace it here:
#   docker buildx imagetools inspect python:3.11-slim-bookworm --format '{{json .Manifest.Digest}}'
#   (or: skopeo inspect --format '{{.Digest}}' docker://python:3.11-slim-bookworm)
# Any base with Python 3.11, its venv module and CA certificates works: hack/image.sh builds one
# from Debian packages where no registry serves this image and passes it as PYTHON_IMAGE.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:0bee7276f83efd4a1ee05bbbf4281d95ed28e079220a9457f25a93e3f1e3c31b

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
# python3, not python: the official image has both, a Debian-built base only python3.
RUN python3 -m venv /opt/streamgate
WORKDIR /src
# constraints.txt, when present, pins every dependency (a `pip freeze` of a tested
# environment); the glob keeps the build working without it.
COPY pyproject.toml README.md constraints.tx[t] ./
COPY app ./app
# pip itself is removed from the virtualenv; byte-code is compiled now because the root
# filesystem is read-only at run time. The optional build secret `ca_bundle` is a CA bundle for
# pip behind a TLS-inspecting proxy (make image passes the machine's): it is mounted for this
# step only and stored in no layer.
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then \
      export PIP_CERT=/run/secrets/ca_bundle REQUESTS_CA_BUNDLE=/run/secrets/ca_bundle; fi \
 && if [ -f constraints.txt ]; then set -- --constraint constraints.txt; fi \
 && /opt/streamgate/bin/pip install --no-compile "$@" . \
 && /opt/streamgate/bin/pip uninstall --yes pip setuptools wheel \
 && /opt/streamgate/bin/python -m compileall -q /opt/streamgate \
 && /opt/streamgate/bin/streamgate --version

FROM ${PYTHON_IMAGE}
# OCI labels (make image passes them: version from pyproject.toml, revision = git's short
# commit, created = build time in RFC 3339, source = the git remote's URL when there is one).
ARG VERSION=""
ARG REVISION=""
ARG CREATED=""
ARG SOURCE=""
LABEL org.opencontainers.image.title="streamgate" \
      org.opencontainers.image.description="Admission webhook: can AKS workloads use ACR artifact streaming?" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="MIT"
# No pip anywhere in the image: the official base ships one in the system Python (and both
# bases a pip wheel for ensurepip/venv).
RUN rm -rf /usr/local/lib/python3*/site-packages/pip /usr/local/lib/python3*/site-packages/pip-* \
      /usr/local/bin/pip* /usr/local/lib/python3*/ensurepip/_bundled/pip-* \
      /usr/share/python-wheels/pip-*
COPY --from=build /opt/streamgate /opt/streamgate
ENV PATH=/opt/streamgate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    STREAMGATE_REVISION=${REVISION}
# Numeric non-root user (the chart's runAsUser/runAsGroup); no /etc/passwd entry needed.
# Nothing is written at run time except /tmp (an emptyDir in the chart): the root
# filesystem can be read-only.
USER 65532:65532
WORKDIR /tmp
EXPOSE 8443
# No HEALTHCHECK: Kubernetes probes /healthz and /readyz.
ENTRYPOINT ["/opt/streamgate/bin/streamgate", "serve"]
