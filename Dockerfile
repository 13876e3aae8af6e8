# syntax=docker/dockerfile:1
# One bushub hub node. Build from the repository root:
#   docker build -t bushub .
#   docker run --rm -p 127.0.0.1:8765:8765 -e BUSHUB_JWT_SECRET=... -e BUSHUB_REDIS_URL=redis://redis:6379/0 bushub
# The node listens on 0.0.0.0 inside the container, which `bushub serve` allows only
# with auth on (BUSHUB_JWT_SECRET or BUSHUB_JWT_PUBLIC_KEYS) or with BUSHUB_INSECURE=1
# on a private network nothing else can reach. Every setting is a BUSHUB_* variable.

FROM python:3.11-slim AS build
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY libs ./libs
COPY services ./services
# The hub only: no pipecat, no test or benchmark extras.
RUN pip install --prefix=/install .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BUSHUB_PORT=8765 \
    BUSHUB_LOG_FORMAT=json
COPY --from=build /install /usr/local
RUN groupadd --system --gid 10001 bushub \
    && useradd --system --uid 10001 --gid bushub --no-create-home --shell /usr/sbin/nologin bushub
USER 10001:10001
EXPOSE 8765
# Liveness only (/healthz): readiness (/readyz) is for the load balancer and goes false
# while draining or while Redis is unreachable, which is no reason to restart the node.
# The check follows BUSHUB_PORT: give a port with it, not with --port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('BUSHUB_PORT', '8765'), timeout=2)"]
# SIGTERM drains (sockets closed with 1012 after their queues flush); let the runtime
# wait at least BUSHUB_DRAIN_TIMEOUT (default 10 s) plus a margin before SIGKILL.
STOPSIGNAL SIGTERM
ENTRYPOINT ["bushub"]
CMD ["serve", "--host", "0.0.0.0"]
