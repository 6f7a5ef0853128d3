"""/api/auth and /api/projects/{id}/keys through the HTTP API.

Users are created through the service layer (fast argon2 settings in tests) and log in
for real; ``client`` is an admin token without a user document (see conftest).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from flask_jwt_extended import decode_token

from polymicro.auth import service as auth
from polymicro.auth.models import ApiKey, User
from polymicro.logs.models import LogEntry
from polymicro.metrics.models import CpuMetric, CpuPoint
from tests.conftest import token_for
from tests.factories import make_service

PASSWORD = "correct horse battery"
UNKNOWN_ID = "0123456789abcdef01234567"


def new_user(app, username="alice", role="viewer", password=PASSWORD, active=True) -> dict:
    with app.app_context():
        user = auth.register_user(
            {"username": username, "email": f"{username}@example.com", "password": password}
            | {"role": role},
            by_admin=True,
        )
        if not active:
            User.objects(id=user["id"]).update(set__is_active=False)
    return {**user, "id": str(user["id"])}


def login(app, username="alice", password=PASSWORD):
    return app.test_client().post(
        "/api/auth/login", json={"username": username, "password": password}
    )


def tokens(app, username="alice", password=PASSWORD) -> dict:
    response = login(app, username, password)
    assert response.status_code == 200, response.json
    return response.json


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def assert_error(response, code: int) -> None:
    assert response.status_code == code, response.json
    assert response.json["code"] == code
    assert isinstance(response.json["status"], str)
    assert isinstance(response.json["message"], str)


def assert_401(response) -> None:
    assert_error(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


# --- registration --------------------------------------------------------------------

REGISTER = "/api/auth/register"


def body(username="alice", **fields):
    data = {"username": username, "email": f"{username}@example.com", "password": PASSWORD}
    data.update(fields)
    return data


def test_registration_is_closed_by_default_for_anonymous_callers(anon_client, ctx):
    response = anon_client.post(REGISTER, json=body())
    assert_error(response, 403)
    assert User.objects.count() == 0


@pytest.mark.parametrize("role", ["viewer", "editor"])
def test_registration_is_closed_to_users_below_admin(app, ctx, role):
    new_user(app, "caller", role=role)
    token = tokens(app, "caller")["access_token"]
    response = app.test_client().post(REGISTER, json=body("bob"), headers=bearer(token))
    assert_error(response, 403)
    assert not User.objects(username="bob").count()


def test_an_admin_registers_a_user_and_chooses_the_role(client, ctx):
    response = client.post(REGISTER, json=body(role="EDITOR"))
    assert response.status_code == 201, response.json
    assert response.json["username"] == "alice"
    assert response.json["role"] == "editor"
    assert response.json["is_active"] is True
    assert "password" not in response.json
    assert PASSWORD not in response.get_data(as_text=True)
    assert User.objects.get(username="alice").role == "editor"


def test_a_bad_token_at_registration_is_401_not_anonymous(anon_client, ctx):
    response = anon_client.post(REGISTER, json=body(), headers=bearer("garbage"))
    assert_401(response)
    assert User.objects.count() == 0


def test_open_registration_gives_a_viewer(app, anon_client, ctx):
    app.config["ALLOW_REGISTRATION"] = True
    response = anon_client.post(REGISTER, json=body())
    assert response.status_code == 201, response.json
    assert response.json["role"] == "viewer"
    assert tokens(app)["user"]["role"] == "viewer"


def test_open_registration_takes_the_dashboards_form_with_a_full_name(app, anon_client, ctx):
    """The original dashboard's register form sends username, email, password and
    full_name; the full name is the user's display name from then on."""
    app.config["ALLOW_REGISTRATION"] = True
    form = body("grace", full_name="  Grace Hopper  ")
    response = anon_client.post(REGISTER, json=form)
    assert response.status_code == 201, response.json
    assert response.json["full_name"] == "Grace Hopper"
    assert response.json["anonymous"] is False
    assert User.objects.get(username="grace").full_name == "Grace Hopper"
    session = tokens(app, "grace")
    assert session["user"]["full_name"] == "Grace Hopper"
    assert "warning" not in session
    me = app.test_client().get("/api/auth/me", headers=bearer(session["access_token"]))
    assert me.json["full_name"] == "Grace Hopper"


@pytest.mark.parametrize(
    ("sent", "kept"), [(None, None), ("", None), ("   ", None), ("x" * 100, "x" * 100)]
)
def test_the_full_name_is_optional_and_at_most_100_characters(client, ctx, sent, kept):
    response = client.post(REGISTER, json=body(full_name=sent))
    assert response.status_code == 201, response.json
    assert response.json["full_name"] == kept
    assert client.post(REGISTER, json=body("nameless")).json["full_name"] is None


@pytest.mark.parametrize("role", ["admin", "editor", "viewer"])
def test_open_registration_refuses_a_chosen_role(app, anon_client, ctx, role):
    app.config["ALLOW_REGISTRATION"] = True
    response = anon_client.post(REGISTER, json=body(role=role))
    assert_error(response, 422)
    assert "role" in response.json["errors"]["json"]
    assert User.objects.count() == 0


@pytest.mark.parametrize("field", [{"is_active": False}, {"id": UNKNOWN_ID}, {"x": 1}])
def test_registration_refuses_read_only_and_unknown_fields(client, ctx, field):
    response = client.post(REGISTER, json=body(**field))
    assert_error(response, 422)
    assert User.objects.count() == 0


@pytest.mark.parametrize("username", ["alice", "ALICE", "Alice"])
def test_a_duplicate_username_in_any_case_is_409(client, ctx, username):
    assert client.post(REGISTER, json=body("alice")).status_code == 201
    response = client.post(REGISTER, json=body(username, email="other@example.com"))
    assert_error(response, 409)
    assert User.objects.count() == 1


def test_a_duplicate_email_in_any_case_is_409(client, ctx):
    assert client.post(REGISTER, json=body("alice")).status_code == 201
    response = client.post(REGISTER, json=body("bob", email="ALICE@example.com"))
    assert_error(response, 409)
    assert User.objects.count() == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("password", "short12"),  # 7 characters
        ("password", "x" * 129),
        ("password", ""),
        ("username", "ab"),
        ("username", "has space"),
        ("username", "x" * 51),
        ("email", "not-an-email"),
        ("full_name", "x" * 101),
        ("full_name", 42),
    ],
)
def test_weak_long_or_malformed_fields_are_422(client, ctx, field, value):
    response = client.post(REGISTER, json=body(**{field: value}))
    assert_error(response, 422)
    assert field in response.json["errors"]["json"]
    assert User.objects.count() == 0


def test_a_password_of_8_and_of_128_characters_is_accepted(client, ctx):
    assert client.post(REGISTER, json=body("short", password="x" * 8)).status_code == 201
    assert client.post(REGISTER, json=body("long", password="y" * 128)).status_code == 201


def test_the_password_is_stored_as_argon2id_and_never_sent_back(app, client, ctx):
    secret = "a very particular passphrase"
    responses = [client.post(REGISTER, json=body(password=secret))]
    stored = User.objects.get(username="alice").password_hash
    assert stored.startswith("$argon2id$")
    assert secret not in stored
    raw_row = json.dumps(User._get_collection().find_one({"username": "alice"}), default=str)
    assert secret not in raw_row
    session = tokens(app, password=secret)
    user_client = app.test_client()
    user_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {session['access_token']}"
    responses.append(login(app, password=secret))
    responses.append(user_client.get("/api/auth/me"))
    responses.append(user_client.put("/api/auth/me", json={"email": "new@example.com"}))
    responses.append(client.get("/api/auth/users"))
    responses.append(client.patch(f"/api/auth/users/{session['user']['id']}", json={}))
    for response in responses:
        assert response.status_code in (200, 201), response.json
        text = response.get_data(as_text=True)
        assert secret not in text
        assert "password" not in text
        assert "$argon2" not in text


# --- login ---------------------------------------------------------------------------

LOGIN = "/api/auth/login"


def assert_login_result(result: dict, user: dict) -> None:
    assert result["token_type"] == "bearer"
    assert result["user"]["id"] == user["id"]
    assert result["user"]["username"] == user["username"]
    assert result["user"]["role"] == user["role"]
    assert result["expires_in"] == 15 * 60
    assert result["access_token"].count(".") == 2
    assert result["refresh_token"].count(".") == 2


def test_login_with_json(app, anon_client, ctx):
    user = new_user(app, role="editor")
    response = anon_client.post(LOGIN, json={"username": "alice", "password": PASSWORD})
    assert response.status_code == 200, response.json
    assert_login_result(response.json, user)
    assert decode_token(response.json["access_token"])["role"] == "editor"


def test_login_with_an_oauth2_password_flow_form(app, anon_client, ctx):
    user = new_user(app)
    form = {"grant_type": "password", "username": "alice", "password": PASSWORD, "scope": ""}
    response = anon_client.post(LOGIN, data=form)
    assert response.request.content_type == "application/x-www-form-urlencoded"
    assert response.status_code == 200, response.json
    assert_login_result(response.json, user)


def test_login_matches_the_username_case_insensitively(app, anon_client, ctx):
    user = new_user(app, "Alice")
    response = anon_client.post(LOGIN, json={"username": "  aLICE ", "password": PASSWORD})
    assert response.status_code == 200, response.json
    assert response.json["user"]["id"] == user["id"]


def test_a_wrong_password_and_an_unknown_user_get_the_same_401(app, anon_client, ctx):
    new_user(app)
    wrong_password = anon_client.post(LOGIN, json={"username": "alice", "password": "nope1234"})
    unknown_user = anon_client.post(LOGIN, json={"username": "nobody", "password": PASSWORD})
    assert_401(wrong_password)
    assert_401(unknown_user)
    assert wrong_password.json == unknown_user.json


def test_an_inactive_user_cannot_log_in(app, anon_client, ctx):
    new_user(app, active=False)
    response = anon_client.post(LOGIN, json={"username": "alice", "password": PASSWORD})
    assert_401(response)
    assert response.json["message"] == auth.BAD_LOGIN


@pytest.mark.parametrize(
    "payload",
    [{"username": "alice"}, {"password": PASSWORD}, {}, {"username": "alice", "password": 1}],
)
def test_login_without_a_username_or_password_is_422(app, anon_client, ctx, payload):
    new_user(app)
    assert_error(anon_client.post(LOGIN, json=payload), 422)


def test_the_access_token_of_a_login_opens_a_viewer_endpoint_but_no_editor_one(app, ctx):
    new_user(app)
    session = tokens(app)
    user_client = app.test_client()
    assert user_client.get(
        "/api/projects", headers=bearer(session["access_token"])
    ).status_code == (200)
    response = user_client.post(
        "/api/projects", json={"name": "nope"}, headers=bearer(session["access_token"])
    )
    assert_error(response, 403)


# --- tokens and refresh --------------------------------------------------------------

REFRESH = "/api/auth/refresh"


def test_a_refresh_token_is_not_an_accesstoken_for(app, ctx):
    new_user(app)
    session = tokens(app)
    response = app.test_client().get("/api/projects", headers=bearer(session["refresh_token"]))
    assert_401(response)
    assert_401(app.test_client().get("/api/auth/me", headers=bearer(session["refresh_token"])))


def test_an_access_token_cannot_refresh(app, ctx):
    new_user(app)
    session = tokens(app)
    assert_401(app.test_client().post(REFRESH, headers=bearer(session["access_token"])))


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer garbage"}])
def test_refresh_without_a_valid_token_is_401(anon_client, headers):
    assert_401(anon_client.post(REFRESH, headers=headers))


def test_refresh_returns_an_access_token_with_the_current_role(app, client, ctx):
    user = new_user(app)
    session = tokens(app)
    assert client.patch(f"/api/auth/users/{user['id']}", json={"role": "editor"}).status_code == 200
    response = app.test_client().post(REFRESH, headers=bearer(session["refresh_token"]))
    assert response.status_code == 200, response.json
    assert response.json["token_type"] == "bearer"
    assert response.json["user"]["role"] == "editor"
    fresh = response.json["access_token"]
    assert decode_token(fresh)["role"] == "editor"
    created = app.test_client().post("/api/projects", json={"name": "p"}, headers=bearer(fresh))
    assert created.status_code == 201, created.json


def test_refresh_of_a_disabled_user_is_401(app, client, ctx):
    user = new_user(app)
    session = tokens(app)
    assert client.patch(f"/api/auth/users/{user['id']}", json={"is_active": False}).status_code == (
        200
    )
    assert_401(app.test_client().post(REFRESH, headers=bearer(session["refresh_token"])))


# --- me ------------------------------------------------------------------------------

ME = "/api/auth/me"


@pytest.fixture
def alice(app, ctx):
    """A logged-in viewer: (user, client with her access token)."""
    user = new_user(app)
    user_client = app.test_client()
    user_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {tokens(app)['access_token']}"
    return user, user_client


def test_get_me_returns_the_logged_in_user(alice):
    user, user_client = alice
    response = user_client.get(ME)
    assert response.status_code == 200
    assert response.json["id"] == user["id"]
    assert response.json["username"] == "alice"
    assert response.json["role"] == "viewer"


def test_me_without_a_token_is_401(anon_client):
    assert_401(anon_client.get(ME))
    assert_401(anon_client.put(ME, json={"email": "x@example.com"}))


def test_put_me_changes_the_email(alice):
    user, user_client = alice
    response = user_client.put(ME, json={"email": "Alice.New@Example.com"})
    assert response.status_code == 200, response.json
    assert response.json["email"] == "alice.new@example.com"
    assert User.objects.get(id=user["id"]).email == "alice.new@example.com"


def test_put_me_changes_and_clears_the_display_name(alice):
    _, user_client = alice
    response = user_client.put(ME, json={"full_name": "Alice Liddell"})
    assert response.status_code == 200, response.json
    assert response.json["full_name"] == "Alice Liddell"
    assert User.objects.get(username="alice").full_name == "Alice Liddell"
    assert user_client.put(ME, json={"full_name": None}).json["full_name"] is None
    assert_error(user_client.put(ME, json={"full_name": "x" * 101}), 422)
    assert User.objects.get(username="alice").full_name is None


def test_put_me_with_an_email_another_user_has_is_409(app, alice):
    new_user(app, "bob")
    _, user_client = alice
    assert_error(user_client.put(ME, json={"email": "bob@example.com"}), 409)


@pytest.mark.parametrize("current", [None, "wrong password"])
def test_a_password_change_without_the_right_current_password_is_422(app, alice, current):
    _, user_client = alice
    payload = {"password": "a brand new password"}
    if current is not None:
        payload["current_password"] = current
    response = user_client.put(ME, json=payload)
    assert_error(response, 422)
    assert "current_password" in response.json["errors"]["json"]
    assert login(app).status_code == 200
    assert_401(login(app, password="a brand new password"))


def test_a_password_change_with_the_current_password_works_for_the_next_login(app, alice):
    _, user_client = alice
    response = user_client.put(
        ME, json={"password": "a brand new password", "current_password": PASSWORD}
    )
    assert response.status_code == 200, response.json
    assert login(app, password="a brand new password").status_code == 200
    assert_401(login(app))


def test_a_new_password_must_be_strong_enough(alice):
    _, user_client = alice
    response = user_client.put(ME, json={"password": "short", "current_password": PASSWORD})
    assert_error(response, 422)
    assert "password" in response.json["errors"]["json"]


@pytest.mark.parametrize(
    "payload", [{"role": "admin"}, {"is_active": True}, {"username": "root"}, {"id": UNKNOWN_ID}]
)
def test_put_me_cannot_change_role_activity_name_or_id(alice, payload):
    user, user_client = alice
    assert_error(user_client.put(ME, json=payload), 422)
    assert User.objects.get(id=user["id"]).role == "viewer"
    assert User.objects.get(id=user["id"]).username == "alice"


# --- users (admin) -------------------------------------------------------------------

USERS = "/api/auth/users"


def test_an_admin_lists_users_without_secrets(app, client, ctx):
    for name in ("carol", "alice", "bob"):
        new_user(app, name)
    response = client.get(USERS)
    assert response.status_code == 200
    assert [u["username"] for u in response.json] == ["alice", "bob", "carol"]
    fields = {"id", "username", "email", "full_name", "role", "is_active", "anonymous"}
    assert all(set(u) == fields | {"created_at", "updated_at"} for u in response.json)
    assert not any(u["anonymous"] for u in response.json)
    assert json.loads(response.headers["X-Pagination"])["total"] == 3


@pytest.mark.parametrize("role", ["viewer", "editor"])
def test_users_below_admin_cannot_list_or_change_users(app, ctx, role):
    user = new_user(app, "alice", role=role)
    user_client = app.test_client()
    user_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {tokens(app)['access_token']}"
    assert_error(user_client.get(USERS), 403)
    assert_error(user_client.patch(f"{USERS}/{user['id']}", json={"role": "admin"}), 403)
    assert User.objects.get(id=user["id"]).role == role


def test_an_admin_changes_a_role(app, client, ctx):
    user = new_user(app)
    response = client.patch(f"{USERS}/{user['id']}", json={"role": "Editor"})
    assert response.status_code == 200, response.json
    assert response.json["role"] == "editor"
    assert tokens(app)["user"]["role"] == "editor"


def test_an_admin_switches_an_account_off_and_its_login_stops(app, client, ctx):
    user = new_user(app)
    response = client.patch(f"{USERS}/{user['id']}", json={"is_active": False})
    assert response.status_code == 200, response.json
    assert response.json["is_active"] is False
    assert_401(login(app))
    assert client.patch(f"{USERS}/{user['id']}", json={"is_active": True}).status_code == 200
    assert login(app).status_code == 200


@pytest.mark.parametrize("change", [{"role": "editor"}, {"is_active": False}])
def test_the_last_active_admin_cannot_be_demoted_or_switched_off(app, client, ctx, change):
    root = new_user(app, "root", role="admin")
    response = client.patch(f"{USERS}/{root['id']}", json=change)
    assert_error(response, 409)
    assert User.objects.get(id=root["id"]).role == "admin"
    assert User.objects.get(id=root["id"]).is_active is True


def test_an_admin_may_be_demoted_while_another_active_admin_remains(app, client, ctx):
    root = new_user(app, "root", role="admin")
    new_user(app, "second", role="admin")
    response = client.patch(f"{USERS}/{root['id']}", json={"role": "viewer"})
    assert response.status_code == 200, response.json
    assert response.json["role"] == "viewer"


@pytest.mark.parametrize(
    "payload", [{"role": "root"}, {"is_active": "maybe"}, {"password": "x" * 10}, {"email": "x"}]
)
def test_admin_update_refuses_bad_or_unknown_fields(app, client, ctx, payload):
    user = new_user(app)
    assert_error(client.patch(f"{USERS}/{user['id']}", json=payload), 422)


def test_admin_update_of_an_unknown_user_is_404(client, ctx):
    assert_error(client.patch(f"{USERS}/{UNKNOWN_ID}", json={"role": "editor"}), 404)


# --- project API keys ----------------------------------------------------------------


@pytest.fixture
def svc_a(ctx):
    return make_service(name="api")


@pytest.fixture
def svc_b(ctx):
    """A service of another project."""
    return make_service(name="api")


def keys_url(project_id) -> str:
    return f"/api/projects/{project_id}/keys"


def create_key(client, project_id, name="ci") -> dict:
    response = client.post(keys_url(project_id), json={"name": name})
    assert response.status_code == 201, response.json
    return response.json


def key_client(app, raw_key: str):
    key_client = app.test_client()
    key_client.environ_base["HTTP_X_API_KEY"] = raw_key
    return key_client


def at(minute: int) -> str:
    return (datetime(2026, 11, 26, 10, tzinfo=UTC) + timedelta(minutes=minute)).isoformat()


def log_body(svc, **fields) -> dict:
    return {
        "project_id": str(svc.project_id),
        "service_id": str(svc.id),
        "severity": "info",
        "message": "hello",
    } | fields


def make_metric(client, svc, points: int = 1) -> dict:
    response = client.post(
        "/api/metrics/cpu",
        json={
            "project_id": str(svc.project_id),
            "service_name": svc.name,
            "data": [{"time": at(i), "load": 10.0} for i in range(points)],
        },
    )
    assert response.status_code == 201, response.json
    return response.json


def stored_points(metric_id) -> int:
    return CpuPoint.objects(metric_id=metric_id).count()


def test_an_editor_creates_a_key_shown_once(app, svc_a):
    editor = app.test_client()
    editor.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token_for(app, 'editor')}"
    created = create_key(editor, svc_a.project_id, "ci runner")
    assert created["key"].startswith("pmk_")
    assert created["key"].split("_")[1] == created["prefix"]
    assert created["name"] == "ci runner"
    assert created["project_id"] == str(svc_a.project_id)
    assert created["created_by"] == "test-editor"
    assert created["revoked_at"] is None
    assert "key_hash" not in created
    stored = ApiKey.objects.get(id=created["id"])
    assert stored.key_hash != created["key"]
    assert created["key"] not in json.dumps(ApiKey._get_collection().find_one(), default=str)


def test_a_viewer_cannot_create_list_or_revoke_keys(app, client, svc_a):
    created = create_key(client, svc_a.project_id)
    viewer = app.test_client()
    viewer.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token_for(app, 'viewer')}"
    assert_error(viewer.post(keys_url(svc_a.project_id), json={"name": "x"}), 403)
    assert_error(viewer.get(keys_url(svc_a.project_id)), 403)
    assert_error(viewer.delete(f"{keys_url(svc_a.project_id)}/{created['id']}"), 403)
    assert ApiKey.objects.count() == 1
    assert ApiKey.objects.get().revoked_at is None


def test_a_key_for_an_unknown_project_is_404(client, ctx):
    assert_error(client.post(keys_url(UNKNOWN_ID), json={"name": "ci"}), 404)
    assert_error(client.get(keys_url(UNKNOWN_ID)), 404)
    assert ApiKey.objects.count() == 0


@pytest.mark.parametrize(
    "payload", [{}, {"name": ""}, {"name": "x" * 101}, {"name": "a", "key": "x"}]
)
def test_a_key_needs_a_valid_name_and_nothing_else(client, svc_a, payload):
    assert_error(client.post(keys_url(svc_a.project_id), json=payload), 422)
    assert ApiKey.objects.count() == 0


def test_keys_are_listed_without_their_secret_or_hash(client, svc_a, svc_b):
    first = create_key(client, svc_a.project_id, "first")
    second = create_key(client, svc_a.project_id, "second")
    create_key(client, svc_b.project_id, "elsewhere")
    response = client.get(keys_url(svc_a.project_id))
    assert response.status_code == 200
    assert [k["name"] for k in response.json] == ["first", "second"]
    text = response.get_data(as_text=True)
    for created in (first, second):
        assert created["key"] not in text
        assert created["key"].split("_", 2)[2] not in text
    for listed in response.json:
        assert "key" not in listed
        assert "key_hash" not in listed
        assert listed["prefix"]


class TestKeyWritesItsOwnProject:
    @pytest.fixture
    def key(self, app, client, svc_a):
        return key_client(app, create_key(client, svc_a.project_id)["key"])

    def test_post_a_log(self, key, svc_a):
        response = key.post("/api/logs", json=log_body(svc_a))
        assert response.status_code == 201, response.json
        assert LogEntry.objects(project_id=svc_a.project_id).count() == 1

    def test_post_a_log_batch(self, key, svc_a):
        response = key.post("/api/logs/batch", json=[log_body(svc_a), log_body(svc_a)])
        assert response.status_code == 201, response.json
        assert response.json["inserted"] == 2
        assert LogEntry.objects(project_id=svc_a.project_id).count() == 2

    def test_create_a_metric(self, key, svc_a):
        response = key.post(
            "/api/metrics/cpu",
            json={"project_id": str(svc_a.project_id), "service_name": "API"},
        )
        assert response.status_code == 201, response.json
        assert CpuMetric.objects(project_id=svc_a.project_id).count() == 1

    def test_append_points(self, key, client, svc_a):
        metric = make_metric(client, svc_a)
        response = key.post(f"/api/metrics/cpu/{metric['id']}/data", json={"load": 12.5})
        assert response.status_code == 201, response.json
        assert stored_points(metric["id"]) == 2

    def test_replace_points(self, key, client, svc_a):
        metric = make_metric(client, svc_a, points=3)
        response = key.put(
            f"/api/metrics/cpu/{metric['id']}", json={"data": [{"time": at(9), "load": 1.0}]}
        )
        assert response.status_code == 200, response.json
        assert stored_points(metric["id"]) == 1


class TestKeyCannotTouchAnotherProject:
    """OWASP API1 (object-level authorization): a key of project A and project B's data."""

    @pytest.fixture
    def key(self, app, client, svc_a):
        return key_client(app, create_key(client, svc_a.project_id)["key"])

    def test_post_a_log(self, key, svc_b):
        assert_error(key.post("/api/logs", json=log_body(svc_b)), 403)
        assert LogEntry.objects.count() == 0

    def test_post_a_log_batch_with_one_entry_of_another_project(self, key, svc_a, svc_b):
        response = key.post("/api/logs/batch", json=[log_body(svc_a), log_body(svc_b)])
        assert_error(response, 403)
        assert LogEntry.objects.count() == 0

    def test_post_a_log_naming_its_project_with_a_service_of_another(self, key, svc_a, svc_b):
        response = key.post("/api/logs", json=log_body(svc_a, service_id=str(svc_b.id)))
        assert_error(response, 422)
        assert LogEntry.objects.count() == 0

    def test_create_a_metric(self, key, svc_b):
        response = key.post(
            "/api/metrics/cpu", json={"project_id": str(svc_b.project_id), "service_name": "api"}
        )
        assert_error(response, 403)
        assert CpuMetric.objects.count() == 0

    def test_append_points(self, key, client, svc_b):
        metric = make_metric(client, svc_b)
        response = key.post(f"/api/metrics/cpu/{metric['id']}/data", json={"load": 99.0})
        assert_error(response, 403)
        assert stored_points(metric["id"]) == 1

    def test_replace_points(self, key, client, svc_b):
        metric = make_metric(client, svc_b, points=3)
        response = key.put(f"/api/metrics/cpu/{metric['id']}", json={"data": []})
        assert_error(response, 403)
        assert stored_points(metric["id"]) == 3

    def test_read_anything(self, key, client, svc_a, svc_b):
        """A key writes; it reads nothing, not even its own project."""
        log_id = client.post("/api/logs", json=log_body(svc_b)).json["id"]
        metric = make_metric(client, svc_b)
        for path in (
            "/api/projects",
            f"/api/projects/{svc_a.project_id}",
            f"/api/projects/{svc_b.project_id}",
            "/api/services",
            f"/api/services/{svc_b.id}",
            "/api/logs",
            f"/api/logs/{log_id}",
            f"/api/logs/project/{svc_a.project_id}",
            f"/api/logs/project/{svc_b.project_id}",
            "/api/metrics/cpu",
            f"/api/metrics/cpu/{metric['id']}",
            f"/api/metrics/cpu/project/{svc_b.project_id}",
            keys_url(svc_a.project_id),
            "/api/auth/me",
            "/api/auth/users",
        ):
            assert_error(key.get(path), 403)

    def test_write_the_catalog_or_other_logs(self, key, client, svc_a):
        log_id = client.post("/api/logs", json=log_body(svc_a)).json["id"]
        pid = svc_a.project_id
        attempts = [
            ("post", "/api/projects", {"name": "new"}),
            ("patch", f"/api/projects/{pid}", {"owner": "mallory"}),
            ("delete", f"/api/projects/{pid}", None),
            ("post", "/api/services", {"project_id": str(pid), "name": "evil"}),
            ("patch", f"/api/services/{svc_a.id}", {"version": "6.6.6"}),
            ("delete", f"/api/services/{svc_a.id}", None),
            ("patch", f"/api/logs/{log_id}", {"message": "edited"}),
            ("delete", f"/api/logs/{log_id}", None),
            ("post", keys_url(pid), {"name": "another"}),
            ("post", REGISTER, body("mallory")),
        ]
        for method, path, payload in attempts:  # (a key is no admin: registration is closed)
            assert_error(getattr(key, method)(path, json=payload), 403)
        assert LogEntry.objects.get(id=log_id).message == "hello"
        assert ApiKey.objects.count() == 1
        assert User.objects.count() == 0


def test_a_revoked_key_is_401_at_once(app, client, svc_a):
    created = create_key(client, svc_a.project_id)
    key = key_client(app, created["key"])
    assert key.post("/api/logs", json=log_body(svc_a)).status_code == 201
    response = client.delete(f"{keys_url(svc_a.project_id)}/{created['id']}")
    assert response.status_code == 204
    assert_401(key.post("/api/logs", json=log_body(svc_a)))
    assert LogEntry.objects.count() == 1
    listed = client.get(keys_url(svc_a.project_id)).json
    assert listed[0]["revoked_at"] is not None


def test_revoking_an_unknown_key_or_through_another_project_is_404(client, svc_a, svc_b):
    created = create_key(client, svc_a.project_id)
    assert_error(client.delete(f"{keys_url(svc_b.project_id)}/{created['id']}"), 404)
    assert_error(client.delete(f"{keys_url(svc_a.project_id)}/{UNKNOWN_ID}"), 404)
    assert ApiKey.objects.get(id=created["id"]).revoked_at is None


def test_deleting_the_project_kills_its_keys(app, client, svc_a):
    key = key_client(app, create_key(client, svc_a.project_id)["key"])
    assert key.post("/api/logs", json=log_body(svc_a)).status_code == 201
    assert client.delete(f"/api/projects/{svc_a.project_id}").status_code == 204
    assert_401(key.post("/api/logs", json=log_body(svc_a)))
    assert ApiKey.objects.count() == 0


def test_garbage_keys_are_401(app, client, svc_a):
    raw = create_key(client, svc_a.project_id)["key"]
    _, prefix, secret = raw.split("_", 2)
    for garbage in (
        "nonsense",
        "pmk_",
        f"pmk_{prefix}",
        f"pmk_{prefix}_{secret[:-2]}xx",  # right prefix, wrong secret
        f"pmk_{'f' * 12}_{secret}",  # unknown prefix
        raw + "x" * 300,
        "Bearer " + raw,
    ):
        assert_401(key_client(app, garbage).post("/api/logs", json=log_body(svc_a)))
        assert_401(key_client(app, garbage).get("/api/projects"))  # 401 before the 403
    assert LogEntry.objects.count() == 0
    assert key_client(app, raw).post("/api/logs", json=log_body(svc_a)).status_code == 201


def test_a_password_change_retires_older_refresh_tokens(app, ctx):
    import time

    new_user(app)
    old = tokens(app)
    time.sleep(1.1)  # token times have one-second resolution
    changed = app.test_client().put(
        "/api/auth/me",
        json={"password": "another-password", "current_password": PASSWORD},
        headers=bearer(old["access_token"]),
    )
    assert changed.status_code == 200
    refused = app.test_client().post("/api/auth/refresh", headers=bearer(old["refresh_token"]))
    assert_401(refused)
    fresh = tokens(app, password="another-password")
    accepted = app.test_client().post("/api/auth/refresh", headers=bearer(fresh["refresh_token"]))
    assert accepted.status_code == 200
