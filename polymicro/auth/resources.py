"""/api/auth and /api/projects/{id}/keys"""

from flask.views import MethodView

from polymicro.auth import service
from polymicro.auth.schemas import (
    ApiKeyCreatedSchema,
    ApiKeySchema,
    LoginSchema,
    MeUpdateSchema,
    RegisterSchema,
    TokenSchema,
    UserAdminUpdateSchema,
    UserSchema,
)
from polymicro.common.blueprint import Blueprint
from polymicro.common.pagination import QueryPage
from polymicro.security import (
    access,
    caller_is_admin,
    limiter,
    login_key,
    login_limit,
    refresh_caller,
)
from polymicro.security import current_principal as me

blp = Blueprint("auth", __name__, url_prefix="/api/auth", description="Users, login and tokens.")
keys_blp = Blueprint(
    "keys",
    __name__,
    url_prefix="/api/projects",
    description="API keys: how machines write the logs and metrics of one project.",
)


@blp.route("/register")
class Register(MethodView):
    @access(public=True)
    @blp.arguments(RegisterSchema)
    @blp.response(201, UserSchema)
    def post(self, data):
        """Create a user: open to anyone (as a viewer) only when registration is open;
        otherwise an admin's call (who may choose the role)."""
        return service.register_user(data, by_admin=caller_is_admin())


@blp.route("/login")
class Login(MethodView):
    decorators = [limiter.limit(login_limit, key_func=login_key)]

    @access(public=True)
    @blp.arguments(LoginSchema, location="json_or_form")
    @blp.response(200, TokenSchema)
    def post(self, data):
        """Log in with `username` and `password` (JSON or form fields).

        With authentication disabled, any login succeeds: the session is the anonymous
        admin's, and says so in `warning`."""
        return service.login(data["username"], data["password"])


@blp.route("/refresh")
class Refresh(MethodView):
    @access(public=True)
    @blp.response(200, TokenSchema)
    @blp.doc(security=[{"bearerAuth": []}])
    def post(self):
        """A new access token, for `Authorization: Bearer <refresh token>`."""
        token = refresh_caller()
        return service.refresh(token.user_id, token.issued_at)


@blp.route("/me")
class Me(MethodView):
    @access("viewer")
    @blp.response(200, UserSchema)
    def get(self):
        """The logged-in user (with authentication disabled: the anonymous admin)."""
        return service.get_user(me().user_id)

    @access("viewer")
    @blp.arguments(MeUpdateSchema)
    @blp.response(200, UserSchema)
    def put(self, data):
        """Change one's e-mail, display name or password (`current_password` needed for a
        password)."""
        return service.update_me(me().user_id, data)


@blp.route("/users")
class Users(MethodView):
    @access("admin")
    @blp.response(200, UserSchema(many=True))
    @blp.paginate(QueryPage)
    def get(self):
        """List users."""
        return service.list_users()


@blp.route("/users/<objectid:user_id>")
class UserItem(MethodView):
    @access("admin")
    @blp.arguments(UserAdminUpdateSchema)
    @blp.response(200, UserSchema)
    def patch(self, data, user_id):
        """Change a user's role or switch the account off (never the last admin)."""
        return service.admin_update_user(user_id, data)


@keys_blp.route("/<objectid:project_id>/keys")
class ProjectKeys(MethodView):
    @access("editor")
    @keys_blp.response(200, ApiKeySchema(many=True))
    @keys_blp.paginate(QueryPage)
    def get(self, project_id):
        """List a project's API keys (never their secrets)."""
        return service.list_api_keys(project_id)

    @access("editor")
    @keys_blp.arguments(ApiKeySchema)
    @keys_blp.response(201, ApiKeyCreatedSchema)
    def post(self, data, project_id):
        """Create an API key; the secret `key` is shown in this response only."""
        return service.create_api_key(project_id, data["name"], me().username)


@keys_blp.route("/<objectid:project_id>/keys/<objectid:key_id>")
class ProjectKeyItem(MethodView):
    @access("editor")
    @keys_blp.response(204)
    def delete(self, project_id, key_id):
        """Revoke an API key (it stops working at once)."""
        service.revoke_api_key(project_id, key_id)
