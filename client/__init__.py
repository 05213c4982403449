"""A typed Python client for the clipforge HTTP API."""

from client.client import DEFAULT_URL, ApiError, ClipforgeClient, default_url

__all__ = ["DEFAULT_URL", "ApiError", "ClipforgeClient", "default_url"]
