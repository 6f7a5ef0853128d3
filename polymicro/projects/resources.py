"""/api/projects"""

from flask.views import MethodView

from polymicro.common.blueprint import Blueprint
from polymicro.common.pagination import QueryPage
from polymicro.projects import service
from polymicro.projects.schemas import (
    ProjectQueryArgsSchema,
    ProjectSchema,
    ProjectUpdateSchema,
    UsageSchema,
)
from polymicro.security import access

blp = Blueprint(
    "projects",
    __name__,
    url_prefix="/api/projects",
    description="Projects and the services they are made of.",
)


@blp.route("/")
class Projects(MethodView):
    @access("viewer")
    @blp.cached_response(service.list_projects)
    @blp.arguments(ProjectQueryArgsSchema, location="query")
    @blp.response(200, ProjectSchema(many=True))
    @blp.paginate(QueryPage)
    def get(self, args):
        """List projects (each with its `microservices`)."""
        return service.list_projects(**args)

    @access("editor")
    @blp.arguments(ProjectSchema)
    @blp.response(201, ProjectSchema)
    @blp.alt_response(409, description="A project with that name exists.")
    def post(self, data):
        """Create a project."""
        return service.create_project(data)


@blp.route("/<objectid:project_id>")
@blp.etag
class ProjectItem(MethodView):
    @access("viewer")
    @blp.cached_response(service.get_project, etag=True)
    @blp.response(200, ProjectSchema)
    @blp.alt_response(404, description="No such project.")
    def get(self, project_id):
        """Get a project."""
        return service.get_project(project_id)

    @access("editor")
    @blp.arguments(ProjectUpdateSchema)
    @blp.response(200, ProjectSchema)
    def put(self, data, project_id):
        """Update a project (partial body accepted)."""
        return self._update(data, project_id)

    @access("editor")
    @blp.arguments(ProjectUpdateSchema)
    @blp.response(200, ProjectSchema)
    def patch(self, data, project_id):
        """Update a project (partial body)."""
        return self._update(data, project_id)

    @access("admin")
    @blp.response(204)
    def delete(self, project_id):
        """Delete a project with its services, logs and metrics."""
        blp.check_etag(service.get_project(project_id), ProjectSchema)
        service.delete_project(project_id)

    @staticmethod
    def _update(data, project_id):
        blp.check_etag(service.get_project(project_id), ProjectSchema)
        return service.update_project(project_id, data)


@blp.route("/<objectid:project_id>/usage")
class ProjectUsage(MethodView):
    @access("viewer")
    @blp.response(200, UsageSchema)
    @blp.alt_response(404, description="No such project.")
    def get(self, project_id):
        """What the project stores: counts, oldest and newest times, estimated size."""
        return service.project_usage_view(project_id)
