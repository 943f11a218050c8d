# Two images from one file (docs/DEPLOY.md, "Images"):
#
#   docker build --target service -t ghcr.io/ourvidz/ourvidz:0.1.0 .
#     gateway, jobs, workspace, the migration and secrets Jobs: the base
#     dependencies only (no torch, no model libraries).
#   docker build --target gpu -t ghcr.io/ourvidz/ourvidz-gpu:0.1.0 .
#     sdxl, wan, enhancer: torch's CUDA wheels (they carry the CUDA runtime;
#     the node's driver comes from the NVIDIA container toolkit) and the
#     `models` extra. For a cluster without GPUs (the dev overlay):
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu
#
# Both run as uid 10001 with no compilers or build tools. The gRPC stubs are
# generated in the build stage (grpcio-tools stays there). Model weights are
# mounted at run time, never baked in (HF_HUB_OFFLINE=1). Only `ourvidz/`,
# `services/` and `protos/` go in; the dev stack (`ourvidz_dev/`) and the CLI
# (`cli/`) stay out (.dockerignore), so the wheel holds neither.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the stubs and the project's wheel ---------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m pip install "grpcio-tools>=1.66"
COPY pyproject.toml ./
COPY protos ./protos
COPY ourvidz ./ourvidz
COPY services ./services
RUN python -m ourvidz.protogen \
 && python -m pip wheel --no-deps --wheel-dir /wheels .

# --- the virtual environments ---------------------------------------------------
FROM build AS venv-service
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install /wheels/ourvidz-*.whl

FROM build AS venv-gpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu124
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --index-url "$TORCH_INDEX" "torch>=2.4" \
 && /opt/venv/bin/pip install "$(ls /wheels/ourvidz-*.whl)[models]"

# --- what both images share -----------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --gid 10001 ourvidz \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
      --shell /usr/sbin/nologin ourvidz
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/tmp/hf
WORKDIR /tmp

# --- the images -----------------------------------------------------------------
FROM runtime AS gpu
COPY --from=venv-gpu /opt/venv /opt/venv
USER 10001:10001
CMD ["python", "-m", "services.sdxl"]

# Last, so that a plain `docker build .` makes the slim image.
FROM runtime AS service
COPY --from=venv-service /opt/venv /opt/venv
USER 10001:10001
CMD ["python", "-m", "services.gateway"]
