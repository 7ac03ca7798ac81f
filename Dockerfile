# gpt_proxy: the same gunicorn command and config as `make run`, listening on 0.0.0.0:7345.
#   docker build -t gpt_proxy .
#   docker run --env-file .env -p 127.0.0.1:7345:7345 --stop-timeout 130 gpt_proxy
# (--stop-timeout above GRACEFUL_TIMEOUT lets running streams finish on `docker stop`.)
# Prometheus metrics listen on 7346 inside the container: publish that port only where the
# scraper reaches it (-p 127.0.0.1:7346:7346, or a private network), never to the public.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BIND=0.0.0.0:7345 \
    METRICS_BIND=0.0.0.0:7346

RUN useradd --create-home --home-dir /home/app --uid 10001 --shell /usr/sbin/nologin app

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY --chown=root:root app.py gunicorn.conf.py ./
COPY --chown=root:root gpt_proxy/ gpt_proxy/
COPY --chown=root:root roles/ roles/
COPY --chown=root:root static/ static/

# The default conversation store (CONVERSATION_STORE) is a SQLite file under data/: writable
# by the service's user; mount a volume there (-v gpt_proxy_data:/app/data) to keep it.
RUN mkdir -p /app/data && chown app:app /app/data

USER app
EXPOSE 7345 7346
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ['BIND'].rsplit(':', 1)[1]; sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status != 200)"]
STOPSIGNAL SIGTERM
CMD ["gunicorn", "-c", "gunicorn.conf.py", "app:app"]
