# polymicro API image: gunicorn serving wsgi:app on 0.0.0.0:8000 as a non-root user.
# The same image runs the stream server (a second gunicorn with other POLYMICRO_GUNICORN_*
# settings) and the worker (command `flask --app polymicro worker`). Settings come from
# the environment (POLYMICRO_*); see docker-compose.yml and deploy/kubernetes/.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    POLYMICRO_GUNICORN_BIND=0.0.0.0:8000 \
    POLYMICRO_ENV=production \
    POLYMICRO_INSTANCE_PATH=/home/polymicro/instance

WORKDIR /app

# Dependency layer: the runtime dependencies listed in pyproject.toml, installed
# before the source is copied so that code changes do not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The application itself (its dependencies are already there).
COPY polymicro ./polymicro
COPY wsgi.py gunicorn.conf.py ./
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf build ./*.egg-info \
    && groupadd --gid 10001 polymicro \
    && useradd --uid 10001 --gid 10001 --create-home polymicro

# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

EXPOSE 8000

# Liveness only (/api/health/live touches neither database nor cache): a database outage
# must not mark the app container unhealthy.  Orchestrators should probe
# /api/health/live (restart) and /api/health/ready (traffic); /metrics is for the
# Prometheus scraper and must not be routed from the public network.  gunicorn.conf.py
# keeps the per-worker metric files in a fresh directory under /tmp (writable by the
# user below; mount an emptyDir/tmpfs there if the root filesystem is read-only).
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/api/health/live', timeout=4)"]

CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
