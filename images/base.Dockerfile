# CPU image: data prep, evaluation, ensemble + DenseCRF, submission, registration, and the
# MLflow tracking server (manifests/base/mlflow.yaml). Build from the repository root:
#   docker build -f images/base.Dockerfile --build-arg GIT_SHA=$(git rev-parse --short HEAD) .
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
# PyTorch wheel index: its CPU builds (no CUDA libraries).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
LABEL org.opencontainers.image.title="trashseg-base" \
      org.opencontainers.image.description="trashseg CPU image" \
      org.opencontainers.image.revision="${GIT_SHA}"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NO_ALBUMENTATIONS_UPDATE=1 \
    MPLBACKEND=Agg \
    MALLOC_MMAP_THRESHOLD_=33554432 \
    MALLOC_TRIM_THRESHOLD_=268435456 \
    TRASHSEG_GIT_SHA="${GIT_SHA}"

RUN groupadd --gid 10001 trashseg \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin trashseg

WORKDIR /opt/trashseg
COPY pyproject.toml README.md images/pins.py ./
COPY --from=wheels /wheels /tmp/wheels

# Dependencies before the source, so code changes rebuild only the last layers. Every pin
# comes from pyproject (pins.py): torch first, the CPU build from PyTorch's CPU index (TORCH_INDEX);
# natten then builds against it without build isolation (pure Python without CUDA).
# boto3 and psycopg2-binary are for the MLflow server only (S3 artifacts, PostgreSQL); psycopg, the
# driver SQLAlchemy 2 picks for postgresql:// (server and clients), comes from pyproject.
RUN pip install --no-cache-dir setuptools==84.2.1 wheel==0.48.0 \
    && python pins.py pyproject.toml --only torch > /tmp/torch.txt \
    && pip install --no-cache-dir --index-url "${TORCH_INDEX}" -r /tmp/torch.txt \
    && python pins.py pyproject.toml --only natten > /tmp/natten.txt \
    && pip install --no-cache-dir --no-build-isolation -r /tmp/natten.txt \
    && python pins.py pyproject.toml --except torch natten > /tmp/rest.txt \
    && pip install --no-cache-dir --find-links /tmp/wheels -r /tmp/rest.txt boto3==1.44.8 psycopg2-binary==2.9.13 \
    && rm -r /tmp/*.txt /tmp/wheels

COPY trashseg ./trashseg
RUN pip install --no-cache-dir --no-deps . \
    && python -c "import trashseg, torch, natten, pydensecrf, mlflow; print('trashseg image ok, torch', torch.__version__)"

USER 10001:10001
WORKDIR /home/trashseg
CMD ["trashseg", "--help"]
