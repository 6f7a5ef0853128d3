"""Users, tokens and API keys through the service layer (polymicro/auth/service.py).

The same rules as the HTTP tests, called directly: registration, login, refresh, one's
own account, the admin's changes, ``create_admin`` and the project API keys.
"""

from __future__ import annotations

import hashlib
import time

import mongoengine
import pytest
from argon2 import PasswordHasher
from bson import ObjectId
from flask_jwt_extended import decode_token

from polymicro import security
from polymicro.auth import service as auth
from polymicro.auth.models import ApiKey, User
from polymicro.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from polymicro.projects import service as projects
from tests.factories import make_project

PASSWORD = "correct horse battery"


def new_user(username="alice", role="viewer", password=PASSWORD, email=None) -> dict:
    data = {"username": username, "email": email or f"{username}@example.com"}
    data.update(password=password, role=role)
    return auth.register_user(data, by_admin=True)


def stored(user) -> User:
    return User.objects.get(id=user["id"])


# --- registration -------------------------------------------------------------------


def test_registration_is_closed_to_everyone_but_an_admin_by_default(ctx):
    data = {"username": "alice", "email": "a@example.com", "password": PASSWORD}
    with pytest.raises(Forbidden):
        auth.register_user(data)
    assert User.objects.count() == 0


def test_an_admin_registers_a_user_with_the_role_it_chooses(ctx):
    user = new_user(role="editor")
    assert user["role"] == "editor"
    assert user["is_active"] is True
    assert stored(user).role == "editor"


def test_an_admin_registers_a_viewer_when_no_role_is_given(ctx):
    data = {"username": "alice", "email": "a@example.com", "password": PASSWORD}
    assert auth.register_user(data, by_admin=True)["role"] == "viewer"


def test_open_registration_makes_a_viewer(ctx):
    ctx.config["ALLOW_REGISTRATION"] = True
    data = {"username": "alice", "email": "a@example.com", "password": PASSWORD}
    assert auth.register_user(data)["role"] == "viewer"


def test_open_registration_refuses_a_chosen_role(ctx):
    ctx.config["ALLOW_REGISTRATION"] = True
    data = {"username": "mallory", "email": "m@example.com", "password": PASSWORD}
    with pytest.raises(InvalidInput) as caught:
        auth.register_user({**data, "role": "admin"})
    assert "role" in caught.value.errors["json"]
    assert User.objects.count() == 0


@pytest.mark.parametrize("username", ["alice", "ALICE", "Alice"])
def test_usernames_are_unique_case_insensitively(ctx, username):
    new_user("Alice")
    with pytest.raises(Conflict, match="username"):
        new_user(username, email="other@example.com")


@pytest.mark.parametrize("email", ["alice@example.com", "ALICE@Example.COM"])
def test_emails_are_unique_case_insensitively(ctx, email):
    new_user("alice")
    with pytest.raises(Conflict, match="email"):
        new_user("bob", email=email)


def test_the_email_is_stored_lower_case(ctx):
    assert new_user("alice", email="Alice@Example.COM")["email"] == "alice@example.com"


def test_the_database_enforces_unique_usernames_and_emails_by_index(ctx):
    """A race past the service's check still fails: the indexes are unique."""
    new_user("alice")
    twin = {"password_hash": "x", "role": "viewer"}
    with pytest.raises(mongoengine.NotUniqueError):
        User(username="ALICE", username_key="alice", email="new@example.com", **twin).save()
    with pytest.raises(mongoengine.NotUniqueError):
        User(username="bob", username_key="bob", email="alice@example.com", **twin).save()
    assert User.objects.count() == 1


def test_the_password_is_stored_as_an_argon2id_hash_with_the_configured_cost(ctx):
    user = new_user(password=PASSWORD)
    password_hash = stored(user).password_hash
    assert password_hash.startswith("$argon2id$v=19$m=1024,t=1,")
    assert PASSWORD not in password_hash
    assert PasswordHasher().verify(password_hash, PASSWORD)
    raw = User._get_collection().find_one({"_id": stored(user).id})
    assert PASSWORD not in repr(raw)


def test_the_user_view_has_no_password_or_hash(ctx):
    user = new_user()
    assert "password_hash" not in user
    assert "password" not in user
    assert PASSWORD not in repr(user)
    assert "password_hash" not in auth.get_user(user["id"])


# --- login ---------------------------------------------------------------------------


def test_authenticate_returns_the_user_for_the_right_password(ctx):
    user = new_user("Alice")
    assert auth.authenticate("alice", PASSWORD).id == stored(user).id
    assert auth.authenticate("ALICE", PASSWORD).id == stored(user).id


def test_a_wrong_password_and_an_unknown_user_fail_with_the_same_message(ctx):
    new_user("alice")
    with pytest.raises(Unauthorized) as wrong_password:
        auth.authenticate("alice", "not the password")
    with pytest.raises(Unauthorized) as unknown_user:
        auth.authenticate("nobody", PASSWORD)
    assert wrong_password.value.message == unknown_user.value.message == auth.BAD_LOGIN


def test_an_inactive_user_cannot_authenticate(ctx):
    user = new_user("alice")
    stored(user).update(set__is_active=False)
    with pytest.raises(Unauthorized) as caught:
        auth.authenticate("alice", PASSWORD)
    assert caught.value.message == auth.BAD_LOGIN


def test_login_returns_bearer_tokens_with_the_role_and_the_user(ctx):
    user = new_user("alice", role="editor")
    result = auth.login("alice", PASSWORD)
    assert result["token_type"] == "bearer"
    assert result["expires_in"] == ctx.config["ACCESS_TOKEN_MINUTES"] * 60
    assert result["user"]["id"] == user["id"]
    assert "password_hash" not in result["user"]
    access = decode_token(result["access_token"])
    assert access["type"] == "access"
    assert access["sub"] == str(user["id"])
    assert access["role"] == "editor"
    assert access["username"] == "alice"
    assert access["exp"] - access["iat"] == ctx.config["ACCESS_TOKEN_MINUTES"] * 60
    refresh = decode_token(result["refresh_token"])
    assert refresh["type"] == "refresh"
    assert refresh["sub"] == str(user["id"])
    assert refresh["exp"] - refresh["iat"] == ctx.config["REFRESH_TOKEN_DAYS"] * 86400


def test_login_rehashes_a_password_hashed_with_an_older_cost(ctx):
    user = new_user("alice")
    ctx.config["PASSWORD_HASH_TIME_COST"] = 2
    auth.login("alice", PASSWORD)
    assert stored(user).password_hash.startswith("$argon2id$v=19$m=1024,t=2,")
    assert auth.authenticate("alice", PASSWORD).id == stored(user).id


# --- refresh -------------------------------------------------------------------------


def test_refresh_gives_an_access_token_with_the_current_role(ctx):
    new_user("root", role="admin")
    user = new_user("alice", role="viewer")
    assert decode_token(auth.login("alice", PASSWORD)["access_token"])["role"] == "viewer"
    auth.admin_update_user(user["id"], {"role": "editor"})
    result = auth.refresh(str(user["id"]), issued_at=int(time.time()))
    assert result["token_type"] == "bearer"
    assert "refresh_token" not in result
    assert result["user"]["role"] == "editor"
    claims = decode_token(result["access_token"])
    assert claims["type"] == "access"
    assert claims["role"] == "editor"


def test_refresh_refuses_a_disabled_or_missing_user(ctx):
    new_user("root", role="admin")
    user = new_user("alice")
    auth.admin_update_user(user["id"], {"is_active": False})
    for user_id in (str(user["id"]), str(ObjectId()), "not-an-id"):
        with pytest.raises(Unauthorized):
            auth.refresh(user_id, issued_at=int(time.time()))


def test_refresh_refuses_tokens_issued_before_a_password_change(ctx):
    user = new_user("alice")
    before = int(time.time()) - 5
    auth.update_me(user["id"], {"password": "a-new-password", "current_password": PASSWORD})
    with pytest.raises(Unauthorized, match="password change"):
        auth.refresh(str(user["id"]), issued_at=before)
    assert auth.refresh(str(user["id"]), issued_at=int(time.time()) + 1)["token_type"] == "bearer"


# --- one's own account ---------------------------------------------------------------


def test_update_me_changes_the_email_lower_case(ctx):
    user = new_user("alice")
    before = stored(user).updated_at
    result = auth.update_me(user["id"], {"email": "New@Example.com"})
    assert result["email"] == "new@example.com"
    assert stored(user).email == "new@example.com"
    assert stored(user).updated_at >= before


def test_update_me_refuses_an_email_another_user_has(ctx):
    new_user("bob")
    user = new_user("alice")
    with pytest.raises(Conflict):
        auth.update_me(user["id"], {"email": "BOB@example.com"})
    assert stored(user).email == "alice@example.com"


def test_update_me_keeps_ones_own_email_in_another_case(ctx):
    user = new_user("alice")
    assert auth.update_me(user["id"], {"email": "ALICE@example.com"})["email"] == (
        "alice@example.com"
    )


@pytest.mark.parametrize("current", [None, "wrong password", ""])
def test_a_password_change_needs_the_right_current_password(ctx, current):
    user = new_user("alice")
    data = {"password": "a brand new password"}
    if current is not None:
        data["current_password"] = current
    with pytest.raises(InvalidInput) as caught:
        auth.update_me(user["id"], data)
    assert "current_password" in caught.value.errors["json"]
    assert auth.authenticate("alice", PASSWORD)


def test_a_password_change_with_the_current_password_replaces_it(ctx):
    user = new_user("alice")
    auth.update_me(user["id"], {"password": "a brand new password", "current_password": PASSWORD})
    assert auth.authenticate("alice", "a brand new password").id == stored(user).id
    with pytest.raises(Unauthorized):
        auth.authenticate("alice", PASSWORD)
    assert stored(user).password_hash.startswith("$argon2id$")


def test_update_me_of_an_unknown_user_is_not_found(ctx):
    with pytest.raises(NotFound):
        auth.update_me(ObjectId(), {"email": "x@example.com"})


# --- the admin's changes -------------------------------------------------------------


def test_an_admin_changes_a_role_and_switches_an_account_off(ctx):
    new_user("root", role="admin")
    user = new_user("alice")
    assert auth.admin_update_user(user["id"], {"role": "editor"})["role"] == "editor"
    assert auth.admin_update_user(user["id"], {"is_active": False})["is_active"] is False
    assert stored(user).role == "editor"
    assert stored(user).is_active is False
    with pytest.raises(Unauthorized):
        auth.authenticate("alice", PASSWORD)


@pytest.mark.parametrize("change", [{"role": "editor"}, {"role": "viewer"}, {"is_active": False}])
def test_the_last_active_admin_cannot_be_demoted_or_switched_off(ctx, change):
    root = new_user("root", role="admin")
    retired = new_user("retired", role="admin")
    auth.admin_update_user(retired["id"], {"is_active": False})  # an inactive admin: no help
    with pytest.raises(Conflict):
        auth.admin_update_user(root["id"], change)
    assert stored(root).role == "admin"
    assert stored(root).is_active is True


def test_an_admin_can_be_demoted_when_another_active_admin_remains(ctx):
    root = new_user("root", role="admin")
    new_user("second", role="admin")
    assert auth.admin_update_user(root["id"], {"role": "viewer"})["role"] == "viewer"


def test_the_last_admin_may_be_saved_unchanged(ctx):
    root = new_user("root", role="admin")
    result = auth.admin_update_user(root["id"], {"role": "admin", "is_active": True})
    assert result["role"] == "admin"


def test_admin_update_of_an_unknown_user_is_not_found(ctx):
    with pytest.raises(NotFound):
        auth.admin_update_user(ObjectId(), {"role": "editor"})


def test_list_users_is_ordered_by_name_and_has_no_hashes(ctx):
    for name in ("carol", "Alice", "bob"):
        new_user(name)
    users = list(auth.list_users())
    assert [u["username"] for u in users] == ["Alice", "bob", "carol"]
    assert all("password_hash" not in u for u in users)


# --- create_admin --------------------------------------------------------------------


def test_create_admin_creates_an_active_admin(ctx):
    user, created = auth.create_admin("root", "root@example.com", PASSWORD)
    assert created is True
    assert user["role"] == "admin"
    assert user["is_active"] is True
    assert auth.authenticate("root", PASSWORD).role == "admin"


def test_create_admin_resets_an_existing_user_to_an_active_admin_with_the_new_password(ctx):
    new_user("root", role="admin")
    user = new_user("Operator", role="viewer")
    auth.admin_update_user(user["id"], {"is_active": False})
    result, created = auth.create_admin("operator", "ignored@example.com", "the new password")
    assert created is False
    assert result["id"] == user["id"]
    assert result["role"] == "admin"
    assert result["is_active"] is True
    assert auth.authenticate("operator", "the new password").role == "admin"
    with pytest.raises(Unauthorized):
        auth.authenticate("operator", PASSWORD)
    assert User.objects.count() == 2


# --- API keys ------------------------------------------------------------------------


@pytest.fixture
def project(ctx):
    return make_project()


def test_create_api_key_shows_the_secret_once_and_stores_its_sha256(ctx, project):
    created = auth.create_api_key(project.id, "ci", "alice")
    raw = created["key"]
    assert raw.startswith(auth.KEY_PREFIX)
    assert raw.split("_")[1] == created["prefix"]
    key = ApiKey.objects.get(id=created["id"])
    assert key.project_id == project.id
    assert key.created_by == "alice"
    assert key.key_hash == hashlib.sha256(raw.encode()).hexdigest()
    secret = raw.split("_", 2)[2]
    assert secret not in repr(ApiKey._get_collection().find_one({"_id": key.id}))
    listed = list(auth.list_api_keys(project.id))
    assert [k["id"] for k in listed] == [key.id]
    assert "key" not in listed[0]


def test_create_api_key_for_an_unknown_project_is_not_found(ctx):
    with pytest.raises(NotFound):
        auth.create_api_key(ObjectId(), "ci", "alice")
    assert ApiKey.objects.count() == 0


def test_verify_api_key_returns_the_key_and_its_project(ctx, project):
    created = auth.create_api_key(project.id, "ci", None)
    assert auth.verify_api_key(created["key"]) == {"id": created["id"], "project_id": project.id}


def test_keys_whose_secret_contains_an_underscore_verify(ctx, project, monkeypatch):
    """The secret part is URL-safe base64, which has "_" in its alphabet."""
    monkeypatch.setattr(auth.secrets, "token_urlsafe", lambda n: "under_score_" + "x" * 31)
    created = auth.create_api_key(project.id, "ci", None)
    assert created["key"].count("_") > 2
    assert auth.verify_api_key(created["key"]) == {"id": created["id"], "project_id": project.id}


def test_every_generated_key_verifies(ctx, project):
    keys = [auth.create_api_key(project.id, f"k{i}", None) for i in range(40)]
    assert all(
        auth.verify_api_key(k["key"]) == {"id": k["id"], "project_id": project.id} for k in keys
    )


def test_verify_api_key_refuses_garbage(ctx, project):
    raw = auth.create_api_key(project.id, "ci", None)["key"]
    _, prefix, secret = raw.split("_", 2)
    other = auth.create_api_key(project.id, "other", None)["key"]
    garbage = [
        "",
        "nonsense",
        "pmk_",
        f"pmk_{prefix}",
        f"pmk_{prefix}_",
        f"pmk_{prefix}_{secret[:-1]}",  # right prefix, wrong secret
        f"pmk_{prefix}_{secret}x",
        f"xyz_{prefix}_{secret}",  # wrong scheme
        f"pmk_{other.split('_', 2)[1]}_{secret}",  # another key's prefix
        f"pmk_{prefix}_{secret}" + "y" * 200,  # too long
        f"pmk_{'0' * 12}_{secret}",  # unknown prefix
    ]
    for candidate in garbage:
        assert auth.verify_api_key(candidate) is None, candidate
    assert auth.verify_api_key(raw) is not None


def test_a_revoked_key_stops_verifying_at_once(ctx, project):
    created = auth.create_api_key(project.id, "ci", None)
    assert auth.verify_api_key(created["key"]) is not None  # now in the cache
    auth.revoke_api_key(project.id, created["id"])
    assert auth.verify_api_key(created["key"]) is None
    assert ApiKey.objects.get(id=created["id"]).revoked_at is not None
    auth.revoke_api_key(project.id, created["id"])  # twice: still revoked, no error
    assert auth.verify_api_key(created["key"]) is None


def test_a_key_is_revoked_only_through_its_own_project(ctx, project):
    created = auth.create_api_key(project.id, "ci", None)
    with pytest.raises(NotFound):
        auth.revoke_api_key(make_project().id, created["id"])
    with pytest.raises(NotFound):
        auth.revoke_api_key(project.id, ObjectId())
    assert auth.verify_api_key(created["key"]) is not None


def test_deleting_the_project_kills_its_keys(ctx, project):
    created = auth.create_api_key(project.id, "ci", None)
    survivor = auth.create_api_key(make_project().id, "other", None)
    assert auth.verify_api_key(created["key"]) is not None
    projects.delete_project(project.id)
    assert auth.verify_api_key(created["key"]) is None
    assert ApiKey.objects(project_id=project.id).count() == 0
    assert auth.verify_api_key(survivor["key"]) is not None


def test_list_api_keys_of_an_unknown_project_is_not_found(ctx):
    with pytest.raises(NotFound):
        auth.list_api_keys(ObjectId())


def test_list_api_keys_lists_only_that_project_oldest_first(ctx, project):
    first = auth.create_api_key(project.id, "first", None)
    second = auth.create_api_key(project.id, "second", None)
    auth.create_api_key(make_project().id, "elsewhere", None)
    auth.revoke_api_key(project.id, first["id"])
    listed = list(auth.list_api_keys(project.id))
    assert [k["name"] for k in listed] == ["first", "second"]
    assert listed[0]["revoked_at"] is not None
    assert listed[1]["revoked_at"] is None
    assert second["id"] == listed[1]["id"]


# --- security.ensure_project ---------------------------------------------------------


def test_ensure_project_lets_an_unscoped_caller_touch_any_project():
    security.ensure_project(None, ObjectId())


def test_ensure_project_lets_a_key_touch_its_own_project():
    project_id = ObjectId()
    security.ensure_project(project_id, ObjectId(str(project_id)))


def test_ensure_project_forbids_a_key_another_project():
    with pytest.raises(Forbidden):
        security.ensure_project(ObjectId(), ObjectId())


def test_with_auth_disabled_the_caller_is_the_anonymous_admin(ctx):
    ctx.config["AUTH_ENABLED"] = False
    user = auth.get_user(None)
    assert user["anonymous"] is True
    assert user["role"] == "admin"
    assert user["id"] is None
    with pytest.raises(Forbidden, match="anonymous admin"):
        auth.update_me(None, {"email": "x@example.com"})


def test_with_auth_enabled_there_is_no_anonymous_user(ctx):
    with pytest.raises(NotFound):
        auth.get_user(None)


def test_with_auth_disabled_any_login_and_refresh_give_a_warning_bearing_session(ctx):
    ctx.config["AUTH_ENABLED"] = False
    for session in (auth.login("nobody", "anything"), auth.refresh(None, None)):
        assert session["user"]["anonymous"] is True
        assert "disabled" in session["warning"]
        assert decode_token(session["access_token"])["warning"] == session["warning"]
    assert User.objects.count() == 0


def test_a_full_name_is_stored_and_shown(ctx):
    user = auth.register_user(
        {"username": "grace", "email": "g@example.com", "password": PASSWORD, "full_name": "G H"},
        by_admin=True,
    )
    assert user["full_name"] == "G H"
    assert stored(user).full_name == "G H"
    assert auth.update_me(user["id"], {"full_name": "Grace"})["full_name"] == "Grace"
    assert auth.update_me(user["id"], {"full_name": ""})["full_name"] is None
