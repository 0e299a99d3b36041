# The control-plane image: `voicefleet-operator` and `voicefleet-router` (the chart runs
# both from it and always sets `command`). No model, no espeak-ng, no torch.
#
#   docker build -f docker/control.Dockerfile -t ghcr.io/voicefleet/voicefleet-control:0.1.0 .
#
# `make images` builds this same file on a Debian bookworm base made with debootstrap
# (--build-arg BASE_IMAGE=localhost/voicefleet-base:bookworm); docs/images.md.
#
# Layers as in inference.Dockerfile: the Python dependencies (from pyproject.toml alone),
# then VoiceFleet's own code in /opt/voicefleet/app, so a source-only change rebuilds only
# that small last layer. Runs as uid 65532 on a read-only root filesystem.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS runtime
# Python comes with the base (python:*-slim, ours); a bare Debian base gets Debian's.
RUN set -eu; \
    if ! command -v python3 >/dev/null; then \
      apt-get update; \
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv; \
      apt-get clean; \
      rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log; \
    fi

# The dependency lists, from pyproject.toml. A stage of their own: any edit to pyproject.toml
# (a linter setting, another extra) reruns only this; the deps layer below is reused as long
# as the lists it copies are the same.
FROM runtime AS requirements
COPY pyproject.toml docker/requirements.py /tmp/voicefleet-build/
RUN python3 /tmp/voicefleet-build/requirements.py /tmp/voicefleet-build/pyproject.toml \
        operator,router > /requirements.txt \
 && python3 /tmp/voicefleet-build/requirements.py /tmp/voicefleet-build/pyproject.toml \
        --build-system > /build-requirements.txt

FROM runtime AS deps
COPY --from=requirements /requirements.txt /tmp/voicefleet-build/
# `--secret id=pip-ca,src=FILE`: a CA bundle for pip where HTTPS goes through an inspecting
# proxy (make images passes the host's); mounted for this step only, never in a layer.
RUN --mount=type=secret,id=pip-ca,required=false set -eu; \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi; \
    python3 -m venv /opt/voicefleet; \
    /opt/voicefleet/bin/pip install --no-cache-dir --no-compile \
        -r /tmp/voicefleet-build/requirements.txt; \
    /opt/voicefleet/bin/pip uninstall -q -y setuptools 2>/dev/null || true; \
    site=$(/opt/voicefleet/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))'); \
    echo /opt/voicefleet/app > "$site/voicefleet-app.pth"; \
    /opt/voicefleet/bin/python -m compileall -q -f -j 0 --invalidation-mode unchecked-hash \
        /opt/voicefleet/lib >/dev/null; \
    rm -rf /tmp/voicefleet-build /root/.cache

FROM deps AS build
COPY --from=requirements /build-requirements.txt /tmp/voicefleet-build/
RUN --mount=type=secret,id=pip-ca,required=false set -eu; \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi; \
    /opt/voicefleet/bin/pip install --no-cache-dir -r /tmp/voicefleet-build/build-requirements.txt
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY crds/voicefleet_api ./crds/voicefleet_api
COPY inference/voicefleet_inference ./inference/voicefleet_inference
COPY operator/voicefleet_operator ./operator/voicefleet_operator
RUN /opt/voicefleet/bin/pip install --no-cache-dir --no-deps --no-build-isolation --no-compile \
        --target /opt/voicefleet/app . \
 && /opt/voicefleet/bin/python -m compileall -q -f --invalidation-mode unchecked-hash \
        /opt/voicefleet/app >/dev/null

FROM deps
COPY --from=build /opt/voicefleet/app /opt/voicefleet/app
ENV PATH=/opt/voicefleet/app/bin:/opt/voicefleet/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The uid the chart's restricted securityContext runs as (runAsUser 65532).
USER 65532:65532
WORKDIR /tmp
CMD ["voicefleet-operator", "--help"]
