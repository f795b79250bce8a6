# syntax=docker/dockerfile:1.7
# One image recipe for every Krypton service, built from the repository root (the uv workspace):
#   docker build --build-arg SERVICE=gateway -t krypton-gateway .
# Each image holds only its service's dependency closure (style.md §1): `uv sync --package` for
# krypton-cli (the `krypton run` entry point), the service, and krypton-audit, because
# `krypton.cli.main` imports `krypton.audit.verify` at import time.
ARG PYTHON_VERSION=3.11
ARG UV_VERSION=0.13.9

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

FROM python:${PYTHON_VERSION}-slim-bookworm AS builder
ARG SERVICE
RUN test -n "${SERVICE}" || { echo "build with --build-arg SERVICE=<name>" >&2; exit 1; } \
    && case "${SERVICE}" in gateway|ingest|index|authorize|render|audit) ;; \
       *) echo "unknown service: ${SERVICE}" >&2; exit 1 ;; esac
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# Third-party dependencies first, from the lock file and the members' metadata only, so that a
# source change does not invalidate this (slow) layer.
COPY pyproject.toml uv.lock ./
COPY libs/krypton/pyproject.toml libs/krypton/pyproject.toml
COPY apps/cli/pyproject.toml apps/cli/pyproject.toml
COPY services/gateway/pyproject.toml services/gateway/pyproject.toml
COPY services/ingest/pyproject.toml services/ingest/pyproject.toml
COPY services/index/pyproject.toml services/index/pyproject.toml
COPY services/authorize/pyproject.toml services/authorize/pyproject.toml
COPY services/render/pyproject.toml services/render/pyproject.toml
COPY services/audit/pyproject.toml services/audit/pyproject.toml
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-workspace \
        --package krypton-cli --package krypton-audit --package "krypton-${SERVICE}"
# Then the workspace members themselves, installed non-editable so /app/.venv stands alone.
COPY libs libs
COPY apps apps
COPY services services
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable \
        --package krypton-cli --package krypton-audit --package "krypton-${SERVICE}"

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
ARG SERVICE
LABEL org.opencontainers.image.title="krypton-${SERVICE}" \
      org.opencontainers.image.source="https://github.com/krypton/krypton" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 krypton \
    && useradd --system --uid 10001 --gid krypton --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin krypton
COPY --from=builder /app/.venv /app/.venv
COPY deploy/docker/healthcheck.py /app/healthcheck.py
# Configuration comes only from KRYPTON_* variables at run time; nothing secret is baked in.
ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    KRYPTON_SERVICE="${SERVICE}" \
    KRYPTON_HTTP_HOST=0.0.0.0 \
    KRYPTON_HTTP_PORT=8080 \
    KRYPTON_LOG_JSON=true \
    KRYPTON_METRICS_HOST=0.0.0.0 \
    KRYPTON_METRICS_PORT=9100
WORKDIR /app
USER 10001:10001
# 8080: the gateway's HTTP; 9100: every service's Prometheus /metrics (kept off the internet).
EXPOSE 8080 9100
# gateway: GET /healthz; the NATS workers have no HTTP port, so the script checks that their
# NATS server answers (see deploy/docker/healthcheck.py).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/app/healthcheck.py"]
# exec: the service is PID 1 and receives SIGTERM directly for a graceful shutdown.
ENTRYPOINT ["/bin/sh", "-c", "exec krypton run \"${KRYPTON_SERVICE}\""]
