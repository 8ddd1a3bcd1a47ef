# syntax=docker/dockerfile:1
# streamgate: the admission webhook image the Helm chart runs.
#   docker build -t streamgate:dev .
# Two stages on the same slim base: the first installs the package into a virtualenv, the
# second copies only that virtualenv (no pip, no wheels cache, no build tools).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/streamgate
WORKDIR /src
# constraints.txt, when present, pins every dependency (a `pip freeze` of a tested
# environment); the glob keeps the build working without it.
COPY pyproject.toml README.md constraints.tx[t] ./
COPY app ./app
# pip itself is removed from the virtualenv; byte-code is compiled now because the root
# filesystem is read-only at run time.
RUN if [ -f constraints.txt ]; then set -- --constraint constraints.txt; fi \
 && /opt/streamgate/bin/pip install --no-compile "$@" . \
 && /opt/streamgate/bin/pip uninstall --yes pip setuptools wheel \
 && /opt/streamgate/bin/python -m compileall -q /opt/streamgate \
 && /opt/streamgate/bin/streamgate --version

FROM ${PYTHON_IMAGE}
# The source revision `streamgate --version` reports (make image passes git's HEAD).
ARG REVISION=""
LABEL org.opencontainers.image.title="streamgate" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.description="Admission webhook: can AKS workloads use ACR artifact streaming?"
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
ENTRYPOINT ["streamgate", "serve"]
