"""gunicorn settings for the benchmark: the repo's gunicorn.conf.py without the access log.

bench/run.py passes ``-c bench/gunicorn_conf.py`` and puts ``--workers``, ``--threads``,
``--worker-class`` and ``--bind`` on the command line (those win over any config file).
With ``POLYMICRO_BENCH_TREE`` set (bench/run.py ``--against DIR`` serving DIR), the
gunicorn.conf.py read is that tree's: this one's hooks may import modules an older tree
does not have.
Writing one access-log line per request would measure the terminal, not the service, and
``--access-logfile`` cannot switch the log off (only ``accesslog = None`` does).
"""

import os
import runpy
from pathlib import Path

_tree = os.environ.get("POLYMICRO_BENCH_TREE") or Path(__file__).resolve().parent.parent
_repo_conf = runpy.run_path(str(Path(_tree) / "gunicorn.conf.py"))
# gunicorn reads every module-level name that is one of its settings and ignores the rest.
globals().update({k: v for k, v in _repo_conf.items() if not k.startswith("_")})

accesslog = None
