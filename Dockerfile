# syntax=docker/dockerfile:1
#
# clipforge images. Two targets share one base:
#   docker build --target api    -t clipforge-api .     # FastAPI + migrations; no torch at all
#   docker build --target worker -t clipforge-worker .  # Celery GPU worker; CUDA torch
#
# Dependencies come from pyproject.toml alone (read with tomllib), in layers that are rebuilt
# only when pyproject.toml or the torch pins change; the source is copied in last.
#
# The worker's torch is the default PyPI Linux wheel, a CUDA build that bundles its CUDA
# libraries (nvidia-* wheels), so the image needs no CUDA base image; the host needs an NVIDIA
# driver recent enough for that CUDA (the 2.14.1 build this repo tests, 2.14.1+cu130, is CUDA 13.0,
# which needs driver >= 580; check `torch.version.cuda` in the build log) and the NVIDIA
# Container Toolkit. For an older driver, build with
#   --build-arg TORCH_INDEX_URL=<a PyTorch wheel index for your CUDA, e.g. .../whl/cu126>

ARG PYTHON_VERSION=3.11

# ---------------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    CLIPFORGE_DATA_DIR=/data \
    CLIPFORGE_STORAGE_DIR=/data/storage \
    CLIPFORGE_HOST=0.0.0.0 \
    CLIPFORGE_PORT=8000 \
    XDG_CACHE_HOME=/cache

# One fixed numeric UID/GID (10001) in both images, so that a /data volume (the embedded default's files) is writable
# by api and worker, and so that runtimes that check runAsNonRoot can see it is not root.
RUN groupadd --system --gid 10001 clipforge \
    && useradd --system --uid 10001 --gid clipforge --home-dir /home/clipforge --create-home \
       --shell /usr/sbin/nologin clipforge \
    && python -m venv "${VIRTUAL_ENV}" \
    && pip install --upgrade "pip>=24" \
    && mkdir -p /data /cache /app \
    && chown clipforge:clipforge /data /cache

WORKDIR /app

# ---------------------------------------------------------------------------------------------
FROM base AS reqs

# Requirement lists from pyproject.toml, without installing the project:
#   /tmp/req-api.txt     runtime deps minus the ML stack (torch, open_clip, ONNX) + API extras
#   /tmp/req-worker.txt  every runtime dep (torch excluded: installed first, pinned) + extras
# CLIPFORGE_EXTRAS names the optional-dependency groups that the service needs; groups that
# pyproject.toml does not (yet) define are ignored.
ARG CLIPFORGE_EXTRAS="api service worker"
COPY pyproject.toml ./
RUN python -c "import os, re, tomllib; \
p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
opt = p.get('optional-dependencies', {}); \
extras = [r for e in os.environ['CLIPFORGE_EXTRAS'].split() for r in opt.get(e, [])]; \
name = lambda r: re.split(r'[\s\[<>=!~;@]', r, maxsplit=1)[0].lower().replace('_', '-'); \
ml = {'torch', 'torchvision', 'open-clip-torch', 'onnx', 'onnxruntime', 'onnxruntime-gpu', 'onnxscript', 'safetensors', 'huggingface-hub'}; \
torch = {'torch', 'torchvision'}; \
deps = p.get('dependencies', []) + extras; \
open('/tmp/req-api.txt', 'w').write('\n'.join(r for r in deps if name(r) not in ml) + '\n'); \
open('/tmp/req-worker.txt', 'w').write('\n'.join(r for r in deps if name(r) not in torch) + '\n')" \
    && cat /tmp/req-api.txt /tmp/req-worker.txt

# ---------------------------------------------------------------------------------------------
FROM base AS api

COPY --from=reqs /tmp/req-api.txt /tmp/
RUN pip install -r /tmp/req-api.txt

COPY . /app
# --no-deps: the dependency layer above is the whole runtime; the API never imports torch.
# The imports run from / so that they see the installed package, not the source tree in /app.
WORKDIR /
RUN pip install --no-deps /app \
    && if python -c "import torch" 2>/dev/null; then echo "torch must not be in the api image" >&2; exit 1; fi \
    && python -c "import api.app, service.db, migrations" \
    && clipforge --help >/dev/null
WORKDIR /app

USER 10001:10001
ENV CLIPFORGE_DEVICE=cpu
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('CLIPFORGE_PORT', '8000') + '/healthz', timeout=4)"]

CMD ["clipforge", "api"]

# ---------------------------------------------------------------------------------------------
FROM base AS worker

# torch first and on its own: the largest layer, rebuilt only when these pins change.
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX_URL=""
# hadolint ignore=DL3013
RUN pip install ${TORCH_INDEX_URL:+--index-url="$TORCH_INDEX_URL"} \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

COPY --from=reqs /tmp/req-worker.txt /tmp/
RUN pip install -r /tmp/req-worker.txt "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

COPY . /app
WORKDIR /
RUN pip install --no-deps /app \
    && python -c "import torch, torchvision, open_clip, onnxruntime; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
    && python -c "import worker.app, worker.runner, service.db, migrations" \
    && clipforge --help >/dev/null
WORKDIR /app

USER 10001:10001
# Read by the NVIDIA Container Toolkit; the GPU itself is granted by the runtime (compose reservation).
ENV CLIPFORGE_DEVICE=cuda \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
CMD ["clipforge", "worker", "--queues", "gpu"]
