"""Who is asking, and may they — in four parts, each changeable on its own:

- :mod:`~polymicro.security.identity` — *who is calling*: users' JWTs (flask-jwt-extended)
  and projects' API keys, verified once per request; the signing secret.
- :mod:`~polymicro.security.policy` — *may they*: the ``access(...)`` rule of every
  endpoint, the roles, a key's project scope (``project_scope``, ``ensure_project``).
- :mod:`~polymicro.security.limits` — *how much*: flask-limiter's per-request and login
  budgets, and the per-project ingest budget in entries (``charge_ingest``).
- :mod:`~polymicro.security.hardening` — security headers and CORS.

Other modules import from here (``from polymicro.security import access, …``); the
names below are the package's interface.  With ``AUTH_ENABLED=false`` every request
acts as an admin (a loud warning is logged at start): for local experiments only.
"""

from __future__ import annotations

import logging

from flask import Flask

from polymicro.security.hardening import DOC_PATHS, init_hardening
from polymicro.security.identity import (
    ANONYMOUS_ADMIN,
    API_KEY_HEADER,
    API_KEY_PREFIX,
    Principal,
    caller,
    has_credentials,
    init_identity,
    jwt,
    refresh_caller,
    verified_caller,
)
from polymicro.security.limits import (
    IngestRateLimited,
    charge_ingest,
    client_key,
    default_limit,
    init_limits,
    limiter,
    login_key,
    login_limit,
)
from polymicro.security.policy import (
    RANK,
    ROLES,
    access,
    caller_is_admin,
    current_principal,
    ensure_project,
    project_scope,
)

log = logging.getLogger(__name__)

__all__ = [
    "ANONYMOUS_ADMIN",
    "API_KEY_HEADER",
    "API_KEY_PREFIX",
    "DOC_PATHS",
    "RANK",
    "ROLES",
    "IngestRateLimited",
    "Principal",
    "access",
    "caller",
    "caller_is_admin",
    "charge_ingest",
    "client_key",
    "current_principal",
    "default_limit",
    "ensure_project",
    "has_credentials",
    "init_security",
    "jwt",
    "limiter",
    "login_key",
    "login_limit",
    "project_scope",
    "refresh_caller",
    "verified_caller",
]


def init_security(app: Flask) -> None:
    init_identity(app)
    init_limits(app)
    init_hardening(app)
    if not app.config["AUTH_ENABLED"]:
        log.warning(
            "AUTHENTICATION IS DISABLED (POLYMICRO_AUTH_ENABLED=false): anyone who can "
            "reach this port can read, change and delete everything. Local experiments only."
        )
