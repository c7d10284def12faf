"""Job input and output paths: confined to allowed roots (no ``..``, no symlinks out); staging."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

from genoserve.core.errors import InvalidArgument

STAGING = ".genoserve-staging"
SUCCESS_MARKER = "_SUCCESS.json"


def confine(raw: str, roots: Sequence[Path], field: str, must_exist: bool) -> Path:
    """The real path of ``raw`` if it lies under one of ``roots``; InvalidArgument naming ``field``.

    Relative paths are taken relative to the first root. ``..`` components are refused outright,
    and symlinks are resolved before the check, so neither can lead outside the roots.
    """
    if not raw:
        raise InvalidArgument.field(field, "is required")
    path = Path(raw)
    if ".." in path.parts:
        raise InvalidArgument.field(field, f"{raw!r} must not contain '..'")
    if not path.is_absolute():
        path = roots[0] / path
    try:
        real = path.resolve(strict=must_exist)
    except FileNotFoundError as exc:
        raise InvalidArgument.field(field, f"{raw!r} does not exist") from exc
    except (OSError, RuntimeError) as exc:
        raise InvalidArgument.field(field, f"{raw!r} cannot be resolved: {exc}") from exc
    real_roots = [root.resolve() for root in roots]
    if not any(real == root or real.is_relative_to(root) for root in real_roots):
        shown = ", ".join(str(r) for r in real_roots)
        raise InvalidArgument.field(field, f"{raw!r} resolves to {real}, outside the allowed roots ({shown})")
    return real


def staging_dir(output_dir: Path, job_id: str) -> Path:
    """Shard outputs of one job, inside its output folder so that the final rename is atomic."""
    return output_dir / STAGING / job_id


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def temporary_name(path: Path) -> Path:
    """A sibling name to write to before ``os.replace``-ing onto ``path``."""
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")


def remove_staging(output_dir: Path, job_id: str) -> None:
    directory = staging_dir(output_dir, job_id)
    shutil.rmtree(directory, ignore_errors=True)
    with contextlib.suppress(OSError):
        directory.parent.rmdir()  # only when no other job stages here
