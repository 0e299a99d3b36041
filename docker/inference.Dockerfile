# The inference image: `voicefleet-server` with espeak-ng and the bundled voice.
#
#   CPU nodes (onnxruntime on CPU):
#     docker build -f docker/inference.Dockerfile -t ghcr.io/voicefleet/voicefleet-server:0.1.0 .
#   GPU nodes (a CUDA base; torch for the vits-torch engine, CUDA onnxruntime):
#     docker build -f docker/inference.Dockerfile --build-arg FLAVOR=gpu \
#       --build-arg BASE_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 \
#       -t ghcr.io/voicefleet/voicefleet-server:0.1.0-cuda .
#
# The operator gives every voice pod this image (chart value operator.defaultVoiceImage
# or a TTSVoice's spec.image) and runs `voicefleet-server` in it. Not built in
# VoiceFleet's own CI (no container engine there); see docs/operations.md.
ARG BASE_IMAGE=python:3.12-slim-bookworm
ARG FLAVOR=cpu

FROM ${BASE_IMAGE} AS runtime-base
# espeak-ng is GPL: installed as the distribution's separate library, used through its
# public C API. python3-venv for the CUDA (Ubuntu) base, which has no Python of its own.
RUN apt-get update \
 && apt-get install -y --no-install-recommends espeak-ng libespeak-ng1 libsndfile1 \
    $(command -v python3 >/dev/null || echo python3 python3-venv) \
 && rm -rf /var/lib/apt/lists/*

FROM runtime-base AS build
ARG FLAVOR
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY crds ./crds
COPY inference ./inference
COPY operator ./operator
COPY hack/voicefleet_localcluster ./hack/voicefleet_localcluster
RUN python3 -m venv /opt/voicefleet \
 && /opt/voicefleet/bin/pip install --no-cache-dir --upgrade pip \
 && if [ "$FLAVOR" = gpu ]; then extras='server,torch'; else extras='server'; fi \
 && /opt/voicefleet/bin/pip install --no-cache-dir ".[$extras]"

FROM runtime-base
COPY --from=build /opt/voicefleet /opt/voicefleet
ENV PATH=/opt/voicefleet/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORT=8080
EXPOSE 8080
# The operator's pod template runs as this non-root uid.
USER 65532:65532
CMD ["voicefleet-server"]
