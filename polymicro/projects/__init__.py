"""Projects: the top of the catalog."""
