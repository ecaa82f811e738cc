# GPU image: training and prediction. PyTorch's CUDA 12.8 build, whose wheel brings the CUDA
# runtime and cuDNN as pinned nvidia-* wheels, on the same pinned Python 3.11 as the base
# image (see images/README.md for why not a pytorch/pytorch base). Build from the repo root:
#   docker build -f images/train.Dockerfile --build-arg GIT_SHA=$(git rev-parse --short HEAD) .
# BASE_IMAGE: only where Docker Hub is unreachable, a local stand-in (make local-base).
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

# Stage 1: build the wheels that ship only as sources needing a C++ compiler (pydensecrf2),
# so the runtime image carries no compiler.
FROM ${BASE_IMAGE} AS wheels
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++=4:12.2.0-3 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY pyproject.toml images/pins.py ./
RUN python pins.py pyproject.toml --only pydensecrf2 > compiled.txt \
    && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels -r compiled.txt

# Stage 2: the image.
FROM ${BASE_IMAGE}

ARG GIT_SHA=unknown
# PyTorch wheel index: the CUDA build the cluster's drivers support (cu128 needs driver >= 570).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
LABEL org.opencontainers.image.title="trashseg-train" \
      org.opencontainers.image.description="trashseg CUDA training image" \
      org.opencontainers.image.revision="${GIT_SHA}"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NO_ALBUMENTATIONS_UPDATE=1 \
    MPLBACKEND=Agg \
    MALLOC_MMAP_THRESHOLD_=33554432 \
    MALLOC_TRIM_THRESHOLD_=268435456 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    TRASHSEG_GIT_SHA="${GIT_SHA}"

RUN groupadd --gid 10001 trashseg \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin trashseg

WORKDIR /opt/trashseg
COPY pyproject.toml README.md images/pins.py ./
COPY --from=wheels /wheels /tmp/wheels

# torch (CUDA build) first; natten builds against it without build isolation. Without a
# CUDA toolkit in the image natten builds without its compiled libnatten and runs its
# Flex Attention backend on GPU (forward and backward); see images/README.md.
RUN pip install --no-cache-dir setuptools==84.2.1 wheel==0.48.0 \
    && python pins.py pyproject.toml --only torch > /tmp/torch.txt \
    && pip install --no-cache-dir --index-url "${TORCH_INDEX}" -r /tmp/torch.txt \
    && python pins.py pyproject.toml --only natten > /tmp/natten.txt \
    && pip install --no-cache-dir --no-build-isolation -r /tmp/natten.txt \
    && python pins.py pyproject.toml --except torch natten > /tmp/rest.txt \
    && pip install --no-cache-dir --find-links /tmp/wheels -r /tmp/rest.txt \
    && rm -r /tmp/*.txt /tmp/wheels

COPY trashseg ./trashseg
RUN pip install --no-cache-dir --no-deps . \
    && python -c "import trashseg, torch, natten; print('trashseg-train ok, torch', torch.__version__, 'cuda', torch.version.cuda)"

USER 10001:10001
WORKDIR /home/trashseg
CMD ["trashseg", "--help"]
