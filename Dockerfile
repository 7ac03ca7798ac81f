# gpt_proxy: the same gunicorn command and config as `make run`, listening on 0.0.0.0:7345.
#   docker build -t gpt_proxy .
#   docker run --rm -p 127.0.0.1:7345:7345 gpt_proxy                  # the demo, no key
#   docker run -d --name gpt_proxy --env-file .env -v gpt_proxy_data:/app/data \
#       -p 127.0.0.1:7345:7345 --stop-timeout 130 gpt_proxy            # a key, data kept
# (--stop-timeout above GRACEFUL_TIMEOUT lets running streams finish on `docker stop`.)
# Prometheus metrics listen on 7346 inside the container: publish that port only where the
# scraper reaches it (-p 127.0.0.1:7346:7346, or a private network), never to the public.
# --read-only works as it is (temporary files go to /dev/shm when /tmp is not writable);
# the data folder then needs its volume. compose.yaml runs two of these behind nginx.
FROM docker.io/library/python:3.11-slim-bookworm

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

COPY --chown=root:root app.py gunicorn.conf.py healthcheck.py ./
COPY --chown=root:root gpt_proxy/ gpt_proxy/
COPY --chown=root:root roles/ roles/
COPY --chown=root:root static/ static/

# The default conversation store (CONVERSATION_STORE) is a SQLite file under data/: writable
# by the service's user; mount a volume there (-v gpt_proxy_data:/app/data) to keep it. A new
# named volume takes this folder's owner; a host folder must be writable by uid 10001, or
# the service refuses to start and says so.
RUN mkdir -p /app/data && chown app:app /app/data

USER app
EXPOSE 7345 7346
# /healthz answers 503 when the data folder cannot be written; the output is in the health log.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "healthcheck.py"]
STOPSIGNAL SIGTERM
CMD ["gunicorn", "-c", "gunicorn.conf.py", "app:app"]
