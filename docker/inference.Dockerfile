# The inference image: `voicefleet-server` with espeak-ng and the bundled voice.
#
#   docker build -f docker/inference.Dockerfile -t ghcr.io/voicefleet/voicefleet-server:0.1.0 .
#   GPU nodes: torch's CUDA wheels from PyPI carry the CUDA runtime (only the driver comes
#   from the node), so no CUDA base image is needed:
#   docker build -f docker/inference.Dockerfile --build-arg FLAVOR=gpu \
#     -t ghcr.io/voicefleet/voicefleet-server:0.1.0-cuda .
#
# `make images` builds this same file on a Debian bookworm base made with debootstrap
# (--build-arg BASE_IMAGE=localhost/voicefleet-base:bookworm); docs/images.md. The operator
# gives every voice pod this image (operator.defaultVoiceImage or a TTSVoice's spec.image).
#
# Layers, cheapest to change last: system packages; the Python dependencies (from
# pyproject.toml alone); VoiceFleet's own code in /opt/voicefleet/app. A source-only change
# rebuilds the last layer only. The pods run as uid 65532 on a read-only root filesystem:
# bytecode is compiled here, HOME is /tmp (an emptyDir in the pod), nothing else is written.
ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG FLAVOR=cpu

FROM ${BASE_IMAGE} AS runtime
# espeak-ng is GPL: installed as the distribution's separate library, used through its
# public C API. Python comes with the base (python:*-slim) or from Debian (our base).
RUN set -eu; \
    packages="espeak-ng"; \
    command -v python3 >/dev/null || packages="$packages python3 python3-venv"; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $packages; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log

# The dependency lists, from pyproject.toml. A stage of their own: any edit to pyproject.toml
# (a linter setting, another extra) reruns only this; the deps layer below is reused as long
# as the lists it copies are the same.
FROM runtime AS requirements
ARG FLAVOR
COPY pyproject.toml docker/requirements.py /tmp/voicefleet-build/
RUN set -eu; \
    if [ "$FLAVOR" = gpu ]; then extras=server,torch; else extras=server; fi; \
    python3 /tmp/voicefleet-build/requirements.py /tmp/voicefleet-build/pyproject.toml "$extras" \
        > /requirements.txt; \
    python3 /tmp/voicefleet-build/requirements.py /tmp/voicefleet-build/pyproject.toml \
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
    # Bytecode now, since the root filesystem is read-only at run time. A wheel may ship
    # files that are not Python 3.11 (templates, other versions' code; the CUDA torch
    # wheels do): never importable, so they are listed and left as source.
    /opt/voicefleet/bin/python -m compileall -q -f -j 0 --invalidation-mode unchecked-hash \
        /opt/voicefleet/lib \
        || echo "compileall: the files listed above stay uncompiled (not valid Python 3.11)"; \
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
# Our code goes to its own directory (on sys.path through voicefleet-app.pth), so the image
# gets it as a small layer of its own above the unchanged dependencies.
RUN /opt/voicefleet/bin/pip install --no-cache-dir --no-deps --no-build-isolation --no-compile \
        --target /opt/voicefleet/app . \
 && /opt/voicefleet/bin/python -m compileall -q -f --invalidation-mode unchecked-hash \
        /opt/voicefleet/app >/dev/null

FROM deps
COPY --from=build /opt/voicefleet/app /opt/voicefleet/app
ENV PATH=/opt/voicefleet/app/bin:/opt/voicefleet/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORT=8080
EXPOSE 8080
# The operator's pod template runs as this non-root uid (runAsUser 65532).
USER 65532:65532
WORKDIR /tmp
CMD ["voicefleet-server"]
