# One image for the API and the worker; the command picks which:
#
#   docker build -t l2o .                  CPU: torch's CPU wheel on python:3.11-slim
#   docker run -p 8000:8000 l2o            the API (`l2o serve`)
#   docker run l2o l2o worker              a meta-training worker
#
# GPU workers: a CUDA base image and torch's CUDA wheel (the host needs the NVIDIA container toolkit):
#
#   docker build -t l2o-gpu \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 .
#
# Settings are L2O_* environment variables (README, "Configuration"); docker-compose.yml wires them up.

ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    L2O_DATA_DIR=/data

# g++ builds the CPU step operator at start (torch.utils.cpp_extension; without it steps run plain torch). A CUDA base
# image has no Python of its own, so it gets the distribution's.
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && if ! command -v python3 >/dev/null 2>&1 || ! python3 -c "import venv, ensurepip" 2>/dev/null; then \
         apt-get install -y --no-install-recommends python3 python3-venv; fi \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV"

# torch first, pinned and from the chosen index: a looser pin would pull the multi-GB CUDA build into
# the CPU image. This layer is reused as long as the pin does not change.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /app
COPY pyproject.toml setup.py README.md ./
COPY service ./service
COPY client ./client
COPY migrations ./migrations
# The service's extra; the package carries its migrations and pretrained checkpoints, so the source
# copied here is only what the wheel is built from.
RUN pip install ".[server]" \
    && rm -rf /app/* \
    && useradd --create-home --uid 1000 l2o \
    && mkdir -p /data \
    && chown l2o:l2o /data

USER l2o
VOLUME ["/data"]
EXPOSE 8000

# The API answers /healthz; a worker (no HTTP) is judged by the heartbeat it writes (`l2o health --help`).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["l2o", "health"]

CMD ["l2o", "serve", "--host", "0.0.0.0", "--port", "8000"]
