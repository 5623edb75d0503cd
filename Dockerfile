# One image for every Switchboard process; the container's command picks which one:
#   python -m gateway | python -m services.codec | python -m services.binary | python -m services.chat
# Build: docker compose build (or: docker build -t switchboard:dev .)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- dependencies: a virtualenv built from the pinned lock only, so this layer is
# ---- reused until requirements.txt changes; wheels only, so no compiler is needed
FROM ${PYTHON_IMAGE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install --no-cache-dir --only-binary=:all: -r /tmp/requirements.txt

# ---- runtime: the virtualenv and the three packages, run as an unprivileged user
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SB_GATEWAY_HOST=0.0.0.0 \
    SB_GATEWAY_PORT=8000 \
    SB_CODEC_METRICS_HOST=0.0.0.0 \
    SB_BINARY_METRICS_HOST=0.0.0.0 \
    SB_CHAT_METRICS_HOST=0.0.0.0
RUN groupadd --system --gid 10001 switchboard \
 && useradd --system --no-log-init --uid 10001 --gid 10001 \
        --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin switchboard
WORKDIR /app
COPY --from=deps /opt/venv /opt/venv
COPY wire ./wire
COPY services ./services
COPY gateway ./gateway
# compiled once here: the code is owned by root and read-only for the process
RUN python -m compileall -q /app
USER 10001:10001
# gateway (WebSocket, /healthz, /readyz, /metrics); metrics of chat, binary, codec
EXPOSE 8000 9101 9102 9103
# for the default command (the gateway); compose gives each worker its own check
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["python", "-m", "gateway"]
