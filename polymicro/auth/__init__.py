"""Users, their logins, and the API keys machines use to push logs and metrics."""
