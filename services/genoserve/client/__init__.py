"""Python client for genoserve: ``Client`` (blocking) and ``AsyncClient`` (asyncio)."""

from genoserve.client.client import AsyncClient, Client, ClientConfig, masks_of

__all__ = ["AsyncClient", "Client", "ClientConfig", "masks_of"]
