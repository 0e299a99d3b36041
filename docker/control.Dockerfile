# The control-plane image: `voicefleet-operator` and `voicefleet-router` (the chart runs
# both from it and always sets `command`). No model, no espeak-ng, no torch.
#
#   docker build -f docker/control.Dockerfile -t ghcr.io/voicefleet/voicefleet-control:0.1.0 .
#
# Not built in VoiceFleet's own CI (its machines have no container engine); the local
# cluster runs the same console scripts from the checkout's virtualenv instead.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY crds ./crds
COPY inference ./inference
COPY operator ./operator
COPY hack/voicefleet_localcluster ./hack/voicefleet_localcluster
RUN python -m venv /opt/voicefleet \
 && /opt/voicefleet/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/voicefleet/bin/pip install --no-cache-dir '.[operator,router]'

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/voicefleet /opt/voicefleet
ENV PATH=/opt/voicefleet/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The uid the chart's restricted securityContext runs as (runAsUser 65532).
USER 65532:65532
CMD ["voicefleet-operator", "--help"]
