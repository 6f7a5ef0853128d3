"""User and API-key use cases: registration, login, tokens, roles, keys.

Passwords are hashed with argon2id (argon2-cffi).  A failed login says the same thing,
and costs the same time, whether the user exists or not.

With authentication disabled (``AUTH_ENABLED=false``) every request acts as an anonymous
admin.  So that the dashboard works in that mode too, ``/me`` shows that admin (marked
``anonymous``), and any login (and refresh) succeeds with a session of it whose tokens
and body carry a ``warning``.  Those tokens are marked ``anonymous``: should the same
secret later serve with authentication on, they open nothing (see
polymicro.security.identity).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from bson import ObjectId
from flask import current_app
from flask_jwt_extended import create_access_token, create_refresh_token

from polymicro.auth.models import ApiKey, User
from polymicro.common import caching, local_cache
from polymicro.common.models import as_view, name_key
from polymicro.common.pagination import PagedQuery
from polymicro.common.timeutil import utcnow
from polymicro.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from polymicro.events import service as events
from polymicro.projects import service as projects

KEYS = caching.Namespace("api-keys")  # key lookups, bumped on every key change
KEY_PREFIX = "pmk_"
BAD_LOGIN = "Unknown user or wrong password."
ANONYMOUS_WARNING = (
    "Authentication is disabled (POLYMICRO_AUTH_ENABLED=false): every request acts as an "
    "anonymous admin, whatever the credentials. For local experiments only."
)


def _hasher() -> PasswordHasher:
    config = current_app.config
    return PasswordHasher(
        time_cost=config["PASSWORD_HASH_TIME_COST"],
        memory_cost=config["PASSWORD_HASH_MEMORY_KIB"],
    )


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def _password_matches(password_hash: str, password: str) -> bool:
    try:
        return _hasher().verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def user_view(user: User) -> dict:
    view = as_view(user, anonymous=False)
    view.pop("password_hash")
    view.pop("tokens_valid_after")
    return view


def anonymous_user() -> dict:
    """The admin every request acts as when authentication is disabled."""
    return {
        "id": None,
        "username": "anonymous",
        "email": None,
        "full_name": "Anonymous admin (authentication is disabled)",
        "role": "admin",
        "is_active": True,
        "anonymous": True,
        "created_at": None,
        "updated_at": None,
    }


def _anonymous_session() -> dict:
    marks = {"anonymous": True, "warning": ANONYMOUS_WARNING}
    claims = {"role": "admin", "username": "anonymous", **marks}
    return {
        "access_token": create_access_token(identity="anonymous", additional_claims=claims),
        "refresh_token": create_refresh_token(identity="anonymous", additional_claims=marks),
        "token_type": "bearer",
        "expires_in": current_app.config["ACCESS_TOKEN_MINUTES"] * 60,
        "user": anonymous_user(),
        "warning": ANONYMOUS_WARNING,
    }


# --- users -------------------------------------------------------------------------------


def _ensure_unique(username: str | None, email: str | None, exclude=None) -> None:
    for field, value, what in (
        ("username_key", username and name_key(username), "username"),
        ("email", email and email.lower(), "email"),
    ):
        if value is None:
            continue
        clash = User.objects(**{field: value})
        if exclude is not None:
            clash = clash.filter(id__ne=exclude)
        if clash.first() is not None:
            raise Conflict(f"That {what} is taken.")


def register_user(data: dict, by_admin: bool = False) -> dict:
    """A new user.  Only an admin registers others (and may choose the role), unless
    ``ALLOW_REGISTRATION`` opens self-registration (as a viewer)."""
    if not by_admin and not current_app.config["ALLOW_REGISTRATION"]:
        raise Forbidden("Registration is closed: an admin creates accounts.")
    if "role" in data and not by_admin:
        raise InvalidInput.field("role", "Only an admin may choose a role.")
    _ensure_unique(data["username"], data["email"])
    user = User(
        username=data["username"],
        username_key=name_key(data["username"]),
        email=data["email"].lower(),
        full_name=data.get("full_name") or None,
        password_hash=hash_password(data["password"]),
        role=data.get("role", "viewer"),
    )
    user.save(force_insert=True)
    return user_view(user)


def authenticate(username: str, password: str) -> User:
    user = User.objects(username_key=name_key(username)).first()
    if user is None:
        _hasher().hash(password)  # same cost as a real check: no timing oracle
        raise Unauthorized(BAD_LOGIN)
    if not _password_matches(user.password_hash, password) or not user.is_active:
        raise Unauthorized(BAD_LOGIN)
    if _hasher().check_needs_rehash(user.password_hash):
        user.update(set__password_hash=hash_password(password))
    return user


def _access_token(user: User) -> str:
    claims = {"role": user.role, "username": user.username}
    return create_access_token(identity=str(user.id), additional_claims=claims)


def login(username: str, password: str) -> dict:
    """A session (access and refresh tokens) for a user's right password; with
    authentication disabled, any login gives the anonymous admin's session."""
    if not current_app.config["AUTH_ENABLED"]:
        return _anonymous_session()
    user = authenticate(username, password)
    return {
        "access_token": _access_token(user),
        "refresh_token": create_refresh_token(identity=str(user.id)),
        "token_type": "bearer",
        "expires_in": current_app.config["ACCESS_TOKEN_MINUTES"] * 60,
        "user": user_view(user),
    }


def refresh(user_id: str | None, issued_at: int | None) -> dict:
    """A new access token, with the user's current role (re-read here).  A refresh token
    issued before the last password change (or deactivation) is refused.  With
    authentication disabled: the anonymous admin's session."""
    if not current_app.config["AUTH_ENABLED"]:
        return _anonymous_session()
    user = User.objects(id=user_id).first() if ObjectId.is_valid(user_id) else None
    if user is None or not user.is_active:
        raise Unauthorized("This account no longer exists or is disabled.")
    valid_after = user.tokens_valid_after
    if valid_after is not None and issued_at < int(valid_after.replace(tzinfo=UTC).timestamp()):
        raise Unauthorized("This refresh token predates a password change; log in again.")
    return {
        "access_token": _access_token(user),
        "token_type": "bearer",
        "expires_in": current_app.config["ACCESS_TOKEN_MINUTES"] * 60,
        "user": user_view(user),
    }


def _load_user(user_id) -> User:
    if user_id is None:  # POLYMICRO_AUTH_ENABLED=false: the caller is nobody in particular
        raise NotFound("Authentication is disabled: there is no signed-in user.")
    user = User.objects(id=user_id).first() if ObjectId.is_valid(str(user_id)) else None
    if user is None:
        raise NotFound(f"User {user_id} not found.")
    return user


def get_user(user_id) -> dict:
    """A user; ``None`` with authentication disabled: the anonymous admin."""
    if user_id is None and not current_app.config["AUTH_ENABLED"]:
        return anonymous_user()
    return user_view(_load_user(user_id))


def update_me(user_id, data: dict) -> dict:
    """Change one's e-mail, display name and/or password (the current password is
    required for that)."""
    if user_id is None:
        raise Forbidden("Authentication is disabled: the anonymous admin has no account to change.")
    user = _load_user(user_id)
    if "password" in data:
        current = data.get("current_password")
        if current is None or not _password_matches(user.password_hash, current):
            raise InvalidInput.field("current_password", "The current password is wrong.")
    email = data.get("email")
    if email is not None and email.lower() != user.email:
        _ensure_unique(None, email, exclude=user.id)
        user.email = email.lower()
    if "full_name" in data:
        user.full_name = data["full_name"] or None
    if "password" in data:
        user.password_hash = hash_password(data["password"])
        user.tokens_valid_after = utcnow()
    if user._get_changed_fields():
        user.updated_at = utcnow()
        user.save()
    return user_view(user)


def list_users() -> PagedQuery:
    return PagedQuery(User.objects.order_by("username_key"), per_page=_user_views)


def _user_views(users: list[User]) -> list[dict]:
    return [user_view(u) for u in users]


def admin_update_user(user_id, data: dict) -> dict:
    """Change a user's role or switch the account off; the last active admin stays."""
    user = _load_user(user_id)
    stays_admin = data.get("role", user.role) == "admin" and data.get("is_active", user.is_active)
    if user.role == "admin" and user.is_active and not stays_admin:
        others = User.objects(role="admin", is_active=True, id__ne=user.id).count()
        if not others:
            raise Conflict("This is the last active admin; make another admin first.")
    changed = {k: v for k, v in data.items() if getattr(user, k) != v}
    if changed:
        update = events.diff(user, changed)
        for key, value in changed.items():
            setattr(user, key, value)
        user.updated_at = utcnow()
        if changed.get("is_active") is False:
            user.tokens_valid_after = user.updated_at
        user.save()
        events.publish("user.updated", user, changes=update)
    return user_view(user)


def create_admin(username: str, email: str, password: str) -> tuple[dict, bool]:
    """Create an admin, or make the existing user of that name an active admin with this
    password.  Returns the user and whether it was created."""
    user = User.objects(username_key=name_key(username)).first()
    if user is None:
        return register_user(
            {"username": username, "email": email, "password": password, "role": "admin"},
            by_admin=True,
        ), True
    now = utcnow()
    update = events.diff(user, {"role": "admin", "is_active": True})
    user.update(
        set__role="admin",
        set__is_active=True,
        set__password_hash=hash_password(password),
        set__updated_at=now,
        set__tokens_valid_after=now,
    )
    if update:
        events.publish("user.updated", user, changes=update)
    return get_user(user.id), False


# --- API keys ----------------------------------------------------------------------------


def _digest(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


@KEYS.writes
def create_api_key(project_id: ObjectId, name: str, created_by: str | None) -> dict:
    """A new key for an existing project; the secret is in the result, and only there."""
    projects.require_project(project_id)
    prefix = secrets.token_hex(6)
    raw_key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey(
        project_id=project_id,
        name=name,
        prefix=prefix,
        key_hash=_digest(raw_key),
        created_by=created_by,
    )
    key.save(force_insert=True)
    KEYS.bump()
    events.publish("api_key.created", key, project_id=project_id)
    return as_view(key, key=raw_key)


def list_api_keys(project_id: ObjectId) -> PagedQuery:
    projects.require_project(project_id)
    query = ApiKey.objects(project_id=project_id).order_by("created_at", "id")
    return PagedQuery(query, per_page=lambda keys: [as_view(k) for k in keys])


@KEYS.writes
def revoke_api_key(project_id: ObjectId, key_id: ObjectId) -> None:
    key = ApiKey.objects(id=key_id, project_id=project_id).first()
    if key is None:
        raise NotFound(f"API key {key_id} not found in project {project_id}.")
    if key.revoked_at is None:
        key.update(set__revoked_at=utcnow(), set__updated_at=utcnow())
        KEYS.bump()
        events.publish("api_key.revoked", key, project_id=project_id)


@KEYS.writes
def delete_api_keys(project_id: ObjectId) -> None:
    """Cascade of a project deletion: its keys stop working at once."""
    ApiKey.objects(project_id=project_id).delete()
    KEYS.bump()


@KEYS.reads
def verify_api_key(raw_key: str) -> dict | None:
    """The live key matching ``raw_key`` ({id, project_id}), or None."""
    parts = raw_key.split("_", 2)  # the secret itself may contain "_"
    if len(parts) != 3 or f"{parts[0]}_" != KEY_PREFIX or len(raw_key) > 200:
        return None
    prefix = parts[1]
    # Kept in this process too, exact across workers (local_cache): a key is verified on
    # every ingest request.
    row = local_cache.cached(KEYS.key(), ("key", prefix), lambda: _key_row(prefix))
    if not row or row["revoked"]:
        return None
    if not hmac.compare_digest(row["key_hash"], _digest(raw_key)):
        return None
    return {"id": row["id"], "project_id": row["project_id"]}


def _key_row(prefix: str) -> dict | None:
    key = ApiKey.objects(prefix=prefix).first()
    if key is None:
        return None
    return {
        "id": key.id,
        "project_id": key.project_id,
        "key_hash": key.key_hash,
        "revoked": key.revoked_at is not None,
    }
