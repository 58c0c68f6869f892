"""The HTTP API: a thin Flask app that parses, authorizes, calls the core and answers."""

from api.app import create_app

__all__ = ["create_app"]
