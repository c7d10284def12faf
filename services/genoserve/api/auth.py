"""Bearer tokens from a file; the caller's tenant is kept in a context variable."""

from __future__ import annotations

import contextvars
import hmac
from dataclasses import dataclass
from pathlib import Path

from genoserve.core.errors import Unauthenticated
from genoserve.core.settings import SettingsError

#: The authenticated caller's tenant for the current request ("" when auth is off).
current_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("genoserve_tenant", default="")

DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class TokenTable:
    """token -> tenant. File format: one ``<token> [tenant]`` per line; ``#`` starts a comment."""

    tenants: dict[str, str]

    @classmethod
    def load(cls, path: Path) -> TokenTable:
        try:
            text = path.read_text()
        except OSError as exc:
            raise SettingsError(f"tokens file {path}: {exc.strerror}") from exc
        tenants: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) > 2:
                raise SettingsError(f"tokens file {path} line {number}: expected '<token> [tenant]'")
            tenants[fields[0]] = fields[1] if len(fields) == 2 else DEFAULT_TENANT
        if not tenants:
            raise SettingsError(f"tokens file {path} has no tokens")
        return cls(tenants)

    def authenticate(self, authorization: str | None) -> str:
        """The tenant of a ``Bearer <token>`` header; UNAUTHENTICATED when missing or wrong."""
        if not authorization:
            raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
        token = token.strip()
        match = ""
        for known, tenant in self.tenants.items():  # constant-time per token
            if hmac.compare_digest(known.encode(), token.encode()):
                match = tenant
        if not match:
            raise Unauthenticated("invalid token")
        return match
