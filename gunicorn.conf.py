"""gunicorn settings for polymicro (`gunicorn -c gunicorn.conf.py wsgi:app`).

Every value can be overridden from the environment; a `--bind` on the command line
(as scripts/run.sh passes) wins over POLYMICRO_GUNICORN_BIND.
"""

import os


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


# The Docker image sets POLYMICRO_GUNICORN_BIND=0.0.0.0:8000; outside a container
# the default stays on loopback.
bind = [os.environ.get("POLYMICRO_GUNICORN_BIND", "127.0.0.1:8000")]

# Provisional numbers: workers and threads will be set from the benchmark
# (make bench) on the 2-core reference machine.
worker_class = "gthread"
# Without Redis the cache is an in-process SimpleCache: each worker would keep its own
# copy and a write through one worker would not invalidate the others'.  So without
# POLYMICRO_REDIS_URL the default is a single (threaded) worker, whose cache is coherent.
_shared_cache = bool(os.environ.get("POLYMICRO_REDIS_URL", "").strip())
workers = _int_env("POLYMICRO_GUNICORN_WORKERS", 2 if _shared_cache else 1)
threads = _int_env("POLYMICRO_GUNICORN_THREADS", 4)

timeout = 30
graceful_timeout = 10

# gunicorn >= 27 opens a control socket in ~/.gunicorn by default; nothing here uses
# it, and two servers on one machine would share the path. (Older versions ignore this.)
control_socket_disable = True

# Logs go to the terminal / container log.
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("POLYMICRO_GUNICORN_LOGLEVEL", "info")
