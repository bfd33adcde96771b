"""The admin HTTP API and the agent console page (aiohttp)."""

from cti.api.http import HttpApi, start_http

__all__ = ["HttpApi", "start_http"]
