# syntax=docker/dockerfile:1
# One image for every Toka process: `toka operator`, and in each agent pod
# `toka kernel`, `toka tools` and `toka agent` (the pod passes the subcommand as
# args; the entrypoint is `toka`). Runs as a non-root user with a read-only root
# filesystem: nothing is written outside the pod's volumes (/tmp, /workspace).

# The base is an argument so a machine without registry access can build on a local
# Debian + Python 3.11 base (`toka dev image`); everyone else gets the public image.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
# Dependencies first, from an empty package, so a change to the source rebuilds only
# the last layer instead of reinstalling every dependency.
RUN mkdir -p operator/toka && touch operator/toka/__init__.py \
 && python -m venv /opt/toka \
 && /opt/toka/bin/pip install --no-cache-dir -c constraints.txt .
COPY operator ./operator
# Without the first build's tree: setuptools would keep its copy of the empty
# __init__.py there, which is newer than the real one.
RUN rm -rf build \
 && /opt/toka/bin/pip install --no-cache-dir --no-deps --force-reinstall .

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="toka" \
      org.opencontainers.image.description="Kubernetes operator that runs LLM agents as Pods; one image for the operator, kernel, tools and agent" \
      org.opencontainers.image.source="https://github.com/toka-dev/toka" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
# git: the tools sidecar seeds /workspace from `workspace.git`. Versions follow
# the base image's Debian security updates rather than a pin that would go stale.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /tmp toka
COPY --from=build /opt/toka /opt/toka
ENV PATH=/opt/toka/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 10001
ENTRYPOINT ["toka"]
CMD ["--help"]
