"""Python client for genoserve: ``Client`` (blocking) and ``AsyncClient`` (asyncio)."""

from genoserve.client.client import AsyncClient, Client, ClientConfig

__all__ = ["AsyncClient", "Client", "ClientConfig"]
