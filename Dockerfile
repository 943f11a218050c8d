# One image for every service; the Deployment picks the module to run.
# Build: docker build -t ourvidz . (add --build-arg TORCH_INDEX=... for CUDA wheels)
FROM python:3.11-slim AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu124
WORKDIR /src
COPY pyproject.toml ./
COPY ourvidz ./ourvidz
COPY services ./services
COPY protos ./protos
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --extra-index-url "$TORCH_INDEX" torch \
 && /opt/venv/bin/pip install --no-cache-dir '.[models,dev]' \
 && /opt/venv/bin/python -m ourvidz.protogen \
 && /opt/venv/bin/pip install --no-cache-dir --no-deps .

FROM python:3.11-slim
RUN useradd --uid 10001 --create-home ourvidz
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
USER 10001
WORKDIR /home/ourvidz
