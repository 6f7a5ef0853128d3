"""/api/services"""

from flask.views import MethodView

from polymicro.common.blueprint import Blueprint
from polymicro.common.pagination import QueryPage
from polymicro.security import access
from polymicro.services import service
from polymicro.services.schemas import ServiceQueryArgsSchema, ServiceSchema, ServiceUpdateSchema

blp = Blueprint(
    "services",
    __name__,
    url_prefix="/api/services",
    description="The microservices of each project.",
)


@blp.route("/")
class Services(MethodView):
    @access("viewer")
    @blp.cached_response(service.list_services)
    @blp.arguments(ServiceQueryArgsSchema, location="query")
    @blp.response(200, ServiceSchema(many=True))
    @blp.paginate(QueryPage)
    def get(self, args):
        """List services."""
        return service.list_services(**args)

    @access("editor")
    @blp.arguments(ServiceSchema)
    @blp.response(201, ServiceSchema)
    @blp.alt_response(409, description="The project has a service with that name.")
    def post(self, data):
        """Create a service in an existing project."""
        return service.create_service(data)


@blp.route("/project/<objectid:project_id>")
class ProjectServices(MethodView):
    @access("viewer")
    @blp.cached_response(service.list_project_services)
    @blp.response(200, ServiceSchema(many=True))
    @blp.alt_response(404, description="No such project.")
    @blp.paginate(QueryPage)
    def get(self, project_id):
        """List the services of a project."""
        return service.list_project_services(project_id)


@blp.route("/<objectid:service_id>")
@blp.etag
class ServiceItem(MethodView):
    @access("viewer")
    @blp.cached_response(service.get_service, etag=True)
    @blp.response(200, ServiceSchema)
    @blp.alt_response(404, description="No such service.")
    def get(self, service_id):
        """Get a service."""
        return service.get_service(service_id)

    @access("editor")
    @blp.arguments(ServiceUpdateSchema)
    @blp.response(200, ServiceSchema)
    def put(self, data, service_id):
        """Update a service (partial body accepted)."""
        return self._update(data, service_id)

    @access("editor")
    @blp.arguments(ServiceUpdateSchema)
    @blp.response(200, ServiceSchema)
    def patch(self, data, service_id):
        """Update a service (partial body)."""
        return self._update(data, service_id)

    @access("editor")
    @blp.response(204)
    def delete(self, service_id):
        """Delete a service with its logs and metrics."""
        blp.check_etag(service.get_service(service_id), ServiceSchema)
        service.delete_service(service_id)

    @staticmethod
    def _update(data, service_id):
        blp.check_etag(service.get_service(service_id), ServiceSchema)
        return service.update_service(service_id, data)
