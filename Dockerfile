# One image for the three services (order, stock, payment): they share every dependency and the
# `common/` package, so one build serves all three and SERVICE_NAME picks the app at start.
#   docker build -t checkout-service:local .
#   docker run -e SERVICE_NAME=stock -e REDIS_NODES=... -e KAFKA_BOOTSTRAP_SERVERS=... checkout-service:local
# The base is pinned by tag and digest (the multi-arch index of python:3.11.14-slim-bookworm).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# ---- build stage: resolve the pinned runtime dependencies into a virtualenv -------------------
FROM ${PYTHON_IMAGE} AS deps

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /build
COPY requirements.txt ./

# supervisor only serves the local stack (./run_local.sh); containers get supervision from the
# platform, so it stays out of the image. Every other pin of requirements.txt is installed as
# is; all ship wheels.
RUN grep -viE '^supervisor==' requirements.txt > requirements.image.txt \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --only-binary=:all: -r requirements.image.txt

# ---- runtime stage ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG SERVICE_NAME=""
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SERVICE_NAME=${SERVICE_NAME}

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /app \
       --shell /usr/sbin/nologin app

WORKDIR /app
COPY --from=deps /opt/venv /opt/venv
COPY common/ common/
COPY order/ order/
COPY stock/ stock/
COPY payment/ payment/
COPY env/service/entrypoint.sh /usr/local/bin/service-entrypoint

# Byte-compile at build time: the root filesystem may be read-only at run time.
RUN python -m compileall -q /app

USER 10001:10001
EXPOSE 8000

# /health answers 200 once the Redis Cluster and Kafka clients are ready.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]

ENTRYPOINT ["/usr/local/bin/service-entrypoint"]
