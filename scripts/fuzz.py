"""Property-based API testing of polymicro with Schemathesis (``make fuzz``).

Authorization is NOT exercised here: the service runs with POLYMICRO_AUTH_ENABLED=false
(every request acts as an admin) so that generated requests reach validation and
storage.  Authentication and authorization are covered by the role-matrix tests of the
test suite (tests/test_access_matrix.py: every endpoint x every kind of caller, API keys
and their project scope) and by tests/test_auth_api.py and tests/test_security.py.

One run, everything on 127.0.0.1 and stopped at the end (also on error, Ctrl-C, SIGTERM):

1. a fresh SecantusDB in a temporary directory, a private redis-server, and polymicro
   under gunicorn (2 workers x 4 threads, the production code path: Redis cache, real
   MongoDB wire protocol);
2. ``schemathesis run <url>/openapi.json`` with every check but the two about
   credentials (see ``AUTH_OFF`` below), the phases examples, coverage, fuzzing and
   stateful, positive and negative data; the hooks in scripts/schemathesis_hooks.py
   drop only failures that are contract rules OpenAPI 3.0 cannot express (each listed
   there);
3. pass when Schemathesis reports no failure and at least ``--min-cases`` test cases
   were generated (1,000 by default); the gunicorn log is scanned for tracebacks too.

Reports in var/fuzz/: junit.xml, the full output (schemathesis.txt), the app's log
(gunicorn.log) and how many failures each exemption of the hooks dropped (dropped.json).

Usage::

    make fuzz                                   # about 6.5 minutes on 2 cores
    make fuzz FUZZ_ARGS='--max-examples 200'    # longer
    .venv/bin/python scripts/fuzz.py --help
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from polymicro_dev import (
    ROOT,
    GunicornSettings,
    Processes,
    app_env,
    run_main,
    start_gunicorn,
    start_redis,
    start_secantus,
)

SCRIPTS = ROOT / "scripts"
OUT_DIR = ROOT / "var" / "fuzz"
SCHEMATHESIS = ROOT / ".venv" / "bin" / "schemathesis"
# Authentication is off in this run, so everything about credentials is left out:
# - the checks ``ignored_auth`` ("the API accepted a request without or with invalid
#   credentials") and ``object_level_authorization``: that is what this run configured;
# - generated ``Authorization``/``X-API-Key`` headers (``missing_required_header`` and
#   ``negative_data_rejection`` would count a request without them as invalid);
# - the account and API-key endpoints (/api/v1/auth/..., /api/v1/projects/{id}/keys...):
#   with no authenticated caller they run in a degenerate mode (``/api/v1/auth/me`` has
#   no user).
# All of it is covered by the role-matrix and auth tests of the test suite.
AUTH_OFF = [
    "--exclude-checks",
    "ignored_auth,object_level_authorization",
    "--generation-with-security-parameters",
    "false",
    "--exclude-path-regex",
    r"^/api/v1/(auth/|projects/\{project_id\}/keys)",
]
# One copy of each operation: the /api/v1 paths.  The unversioned /api aliases are the
# same views (polymicro/common/versioning.py; tests/test_versioning.py shows both answer
# alike and the document describes them alike), so fuzzing them too would halve the
# cases each operation gets in the same time budget and find nothing new.
ONE_COPY = ["--include-path-regex", r"^/api/v1/"]
RE_GENERATED = re.compile(r"Test cases:\s*\n?\s*(\d+) generated")
RE_TRACEBACK = re.compile(r"^Traceback \(most recent call last\):", re.M)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-examples", type=int, default=60, help="cases per operation")
    parser.add_argument(
        "--max-time", type=int, default=360, help="Schemathesis time budget in seconds (360)"
    )
    parser.add_argument("--min-cases", type=int, default=1000, help="fail below this many")
    parser.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    # One worker: with two, Schemathesis's threads call ast.parse at once and CPython 3.11
    # sometimes fails with "SystemError: AST constructor recursion depth mismatch"
    # (CPython gh-106905), an error of the tool, not of the API.  Concurrency is what
    # bench/soak.py exercises.
    parser.add_argument("--workers", type=int, default=1, help="Schemathesis workers (1)")
    parser.add_argument(
        "--phases", default="examples,coverage,fuzzing,stateful", help="Schemathesis phases"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the servers' directory (database, logs)"
    )
    parser.add_argument(
        "extra", nargs="*", help="more Schemathesis options (after --), e.g. -- --include-tag logs"
    )
    return parser.parse_args(argv)


def say(text: str) -> None:
    print(f"fuzz: {text}", flush=True)


def run_schemathesis(url: str, args: argparse.Namespace, workdir: Path) -> tuple[int, str]:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    output_path = OUT_DIR / "schemathesis.txt"
    argv = [
        str(SCHEMATHESIS),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        *AUTH_OFF,
        *ONE_COPY,
        "--phases",
        args.phases,
        "--max-examples",
        str(args.max_examples),
        "--max-time",
        str(args.max_time),
        "--workers",
        str(args.workers),
        "--seed",
        str(args.seed),
        "--request-timeout",
        "30",
        "--generation-database",
        "none",
        "--report",
        "junit",
        "--report-junit-path",
        str(OUT_DIR / "junit.xml"),
        "--no-color",
        *args.extra,
    ]
    env = dict(os.environ, SCHEMATHESIS_HOOKS="schemathesis_hooks")
    env["FUZZ_FILTER_REPORT"] = str(OUT_DIR / "dropped.json")
    (OUT_DIR / "dropped.json").unlink(missing_ok=True)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SCRIPTS), env.get("PYTHONPATH")]))
    say("running: " + " ".join(argv[1:]))
    with output_path.open("w") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own venv's schemathesis
            argv, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            out.write(line)
        returncode = proc.wait()
    return returncode, output_path.read_text()


def main(procs: Processes, args: argparse.Namespace) -> int:
    began = time.monotonic()
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)
    workdir = Path(tempfile.mkdtemp(prefix="polymicro-fuzz-"))
    say(f"seed {args.seed}; working directory {workdir}")
    db = start_secantus(procs, workdir / "db", workdir)
    redis = start_redis(procs, workdir / "redis")
    env = app_env(db.uri, redis.uri)
    env["POLYMICRO_STREAM_MAX_SECONDS"] = "1"  # a generated stream call ends instead of waiting
    # Generated alert receiver URLs name hosts that resolve nowhere: the private-address
    # check (which resolves the host) is for production, not for a schema fuzz.
    env["POLYMICRO_WEBHOOK_ALLOW_PRIVATE"] = "true"
    app = start_gunicorn(procs, env, workdir, GunicornSettings(2, 4))
    say(f"polymicro on {app.uri} (SecantusDB :{db.port}, Redis :{redis.port})")

    returncode, output = run_schemathesis(app.uri, args, workdir)

    problems = []
    match = RE_GENERATED.search(output)
    cases = int(match.group(1)) if match else 0
    if returncode != 0:
        problems.append(f"schemathesis exited with {returncode} (failures above)")
    if cases < args.min_cases:
        problems.append(f"only {cases} test cases were generated (at least {args.min_cases})")
    dropped_path = OUT_DIR / "dropped.json"
    if dropped_path.exists():
        for reason, count in json.loads(dropped_path.read_text()).items():
            say(f"dropped by the hooks: {count} x {reason}")
    app_log = app.log_path.read_text(errors="replace")
    tracebacks = len(RE_TRACEBACK.findall(app_log))
    if tracebacks:
        problems.append(f"{tracebacks} traceback(s) in the gunicorn log {app.log_path}")
    procs.stop_all()
    shutil.copy(app.log_path, OUT_DIR / "gunicorn.log")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - began
    say(f"{cases} test cases, seed {args.seed}, {elapsed:.0f} s; output in var/fuzz/")
    if problems:
        for problem in problems:
            say("FAILED: " + problem)
        return 1
    say("PASS: no failure, no 5xx, every response conforms to the OpenAPI document")
    return 0


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    sys.exit(run_main(lambda procs: main(procs, arguments), "fuzz"))
