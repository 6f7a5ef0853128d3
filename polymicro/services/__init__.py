"""Services: the microservices of a project."""
