"""Python client for genoserve: ``Client`` (blocking) and ``AsyncClient`` (asyncio)."""

from genoserve.client.client import AsyncClient, Client, ClientConfig, masks_of
from genoserve.core.memory import tune_allocator

__all__ = ["AsyncClient", "Client", "ClientConfig", "masks_of", "tune_allocator"]
