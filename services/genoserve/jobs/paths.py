"""Job paths: confined to the allowed roots when submitted and again whenever a job opens them.

Inputs: ``confine`` checks what a client names at submit (no ``..``, no NUL, within the OS's
name limits, under a root once symlinks are resolved, and a regular file or a folder, never a
FIFO, device or socket, which is inspected with ``stat`` and never opened). ``input_file`` and
``folder_files`` repeat the check where a job kind opens a file (a path swapped for a symlink
after submit is refused then).

Outputs: ``open_output_folder`` opens the job's output folder as a directory file descriptor
(``O_NOFOLLOW``) and checks that it is still the folder recorded at submit; everything a job
writes goes through that descriptor (``Folder.path``: ``/proc/self/fd/<fd>`` on Linux), so a
folder replaced by a symlink after the check is not followed. A folder records the tenant that
first wrote to it (``OWNER_MARKER``); another tenant's jobs may not write there.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from genoserve.core.errors import FieldViolation, InvalidArgument, PermissionDenied

#: Shard outputs of a job stage in ``<output_dir>/STAGING/<job id>``, inside the output folder so
#: that the merge's renames are atomic.
STAGING = ".genoserve-staging"
SUCCESS_MARKER = "_SUCCESS.json"
#: ``{"tenant": ...}``: the tenant whose jobs may write into this output folder.
OWNER_MARKER = ".genoserve-owner.json"
#: Linux's limits: bytes per path component, and bytes per path including the final NUL.
NAME_MAX = 255
PATH_MAX = 4096

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class PathError(InvalidArgument):
    """A path a job names or opens breaks a rule (outside the roots, not a regular file, ...).

    At submit it is INVALID_ARGUMENT naming the field; in a worker it fails the job at once
    (retrying cannot help) with the same message.
    """

    @classmethod
    def field(cls, field: str, rule: str) -> PathError:
        return cls(f"{field}: {rule}", [FieldViolation(field, rule)])


def _shown(raw: str) -> str:
    return repr(raw if len(raw) <= 120 else raw[:100] + "..." + raw[-16:])


def check_text(raw: str, field: str) -> None:
    """PathError unless ``raw`` is a path the OS can take: no NUL, components of at most
    NAME_MAX bytes, at most PATH_MAX - 1 bytes in all."""
    if "\x00" in raw:
        raise PathError.field(field, f"{_shown(raw.replace(chr(0), '?'))} must not contain a NUL byte")
    encoded = os.fsencode(raw)
    if len(encoded) >= PATH_MAX:
        raise PathError.field(
            field, f"{_shown(raw)} is {len(encoded)} bytes long; paths are limited to {PATH_MAX} bytes (PATH_MAX)"
        )
    longest = max(encoded.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        raise PathError.field(
            field,
            f"{_shown(raw)} has a name of {len(longest)} bytes; names are limited to {NAME_MAX} bytes (NAME_MAX)",
        )


def _real_roots(roots: Sequence[Path]) -> list[Path]:
    return [Path(os.path.realpath(root)) for root in roots]


def _outside(real: Path, roots: Sequence[Path], field: str) -> str:
    """ "" when ``real`` lies under one of ``roots``, else the rule broken and how to widen the
    roots: the setting (``jobs.output_roots`` for ``output_dir``, else ``jobs.input_roots``) and
    its environment variable, with the roots as they are plus ``real``'s folder."""
    real_roots = _real_roots(roots)
    if any(real == root or real.is_relative_to(root) for root in real_roots):
        return ""
    kind = "output" if field == "output_dir" else "input"
    wider = json.dumps([str(r) for r in real_roots] + [str(real.parent)])
    return (
        f"outside the allowed roots ({', '.join(str(r) for r in real_roots)}), setting jobs.{kind}_roots; "
        f"to allow {real.parent}, start the server and the workers with GENOSERVE_JOBS__{kind.upper()}_ROOTS='{wider}' "
        f"(or jobs.{kind}_roots in the --config YAML file)"
    )


def describe(mode: int) -> str:
    """What kind of file ``mode`` (from stat) is, for messages."""
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def confine(raw: str, roots: Sequence[Path], field: str, must_exist: bool) -> Path:
    """The real path of ``raw`` if it lies under one of ``roots``; PathError naming ``field``.

    Relative paths are taken relative to the first root. ``..`` components are refused outright,
    and symlinks are resolved before the check, so neither can lead outside the roots. With
    ``must_exist``, the path must be a regular file or a folder (inspected with ``stat``, never
    opened: a FIFO would block the caller).
    """
    if not raw:
        raise PathError.field(field, "is required")
    check_text(raw, field)
    path = Path(raw)
    if ".." in path.parts:
        raise PathError.field(field, f"{_shown(raw)} must not contain '..'")
    if not path.is_absolute():
        path = roots[0] / path
    check_text(str(path), field)
    try:
        real = path.resolve(strict=must_exist)
    except FileNotFoundError as exc:
        raise PathError.field(field, f"{_shown(raw)} does not exist") from exc
    except (OSError, RuntimeError) as exc:
        raise PathError.field(field, f"{_shown(raw)} cannot be resolved: {exc}") from exc
    rule = _outside(real, roots, field)
    if rule:
        raise PathError.field(field, f"{_shown(raw)} resolves to {real}, {rule}")
    if must_exist:
        mode = _stat(real, raw, field).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise PathError.field(field, f"{_shown(raw)} is {describe(mode)}, not a regular file or a folder")
    return real


def _stat(real: Path, raw: str, field: str) -> os.stat_result:
    try:
        return os.stat(real)
    except FileNotFoundError as exc:
        raise PathError.field(field, f"{_shown(raw)} does not exist") from exc
    except OSError as exc:
        raise PathError.field(field, f"{_shown(raw)} cannot be read: {exc.strerror}") from exc


def input_file(path: Path | str, roots: Sequence[Path], field: str = "inputs") -> Path:
    """Where a job is about to open ``path``: its real path, if that is still under ``roots``
    and a regular file (``stat`` only; nothing is opened). PathError naming ``path`` otherwise."""
    return _confined_now(path, roots, field, stat.S_ISREG, "a regular file")


def input_folder(path: Path | str, roots: Sequence[Path], field: str = "inputs") -> Path:
    """As ``input_file``, for a folder."""
    return _confined_now(path, roots, field, stat.S_ISDIR, "a folder")


def _confined_now(path: Path | str, roots: Sequence[Path], field: str, kind: Callable[[int], bool], what: str) -> Path:
    raw = str(path)
    check_text(raw, field)
    real = Path(os.path.realpath(raw))
    rule = _outside(real, roots, field)
    if rule:
        raise PathError.field(field, f"{raw} resolves to {real}, {rule}")
    mode = _stat(real, raw, field).st_mode
    if not kind(mode):
        raise PathError.field(field, f"{raw} is {describe(mode)}, not {what}")
    return real


def name_patterns(pattern: str, field: str) -> list[str]:
    """The comma-separated file-name globs of ``pattern``: each matches names inside one folder,
    so '/' (and with it '..' and absolute patterns) is refused."""
    globs = [glob.strip() for glob in pattern.split(",") if glob.strip()]
    if not globs:
        raise PathError.field(field, "needs at least one file-name glob, e.g. *.tif")
    for glob in globs:
        if "/" in glob or "\x00" in glob or glob in (".", ".."):
            raise PathError.field(
                field, f"{_shown(glob)}: globs match file names inside the input folder; '/' and '..' are not allowed"
            )
    return globs


def folder_files(folder: Path, globs: Sequence[str], roots: Sequence[Path], field: str = "inputs") -> list[Path]:
    """The files directly in ``folder`` whose names match one of ``globs``, sorted by name.

    Subfolders are skipped. A match that resolves outside ``roots`` (a symlink out) or is not a
    regular file (a FIFO, device or socket) is refused, naming it; nothing is opened.
    """
    real = input_folder(folder, roots, field)
    with os.scandir(real) as entries:
        names = sorted(e.name for e in entries if any(fnmatch.fnmatchcase(e.name, g) for g in globs))
    files: list[Path] = []
    for name in names:
        member = folder / name
        try:
            if stat.S_ISDIR(os.stat(member).st_mode):
                continue
        except OSError:
            pass  # input_file names the problem
        input_file(member, roots, field)
        files.append(member)
    return files


# -- output folders ----------------------------------------------------------------------------


def _fd_target(fd: int) -> str | None:
    """The path the kernel holds for an open descriptor (Linux), or None where /proc is missing."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


class Folder:
    """An open directory, written through its descriptor; ``shown`` is its path for messages."""

    def __init__(self, fd: int, shown: Path) -> None:
        self.fd = fd
        self.shown = shown
        self._children: list[Folder] = []

    @property
    def path(self) -> Path:
        """A path that reaches this very directory (``/proc/self/fd/<fd>`` on Linux), for code
        that takes paths: nothing swapped in after the open is followed."""
        proc = Path(f"/proc/self/fd/{self.fd}")
        return proc if _fd_target(self.fd) is not None else self.shown

    def unmask(self, text: str) -> str:
        """``text`` with this folder's (and its open subfolders') descriptor paths as the real paths."""
        for child in self._children:
            text = child.unmask(text)
        return text.replace(str(self.path), str(self.shown))

    def recorded(self, path: Path) -> Path:
        """``path`` (under ``self.path``) as a path under ``self.shown``."""
        return self.shown / Path(path).relative_to(self.path)

    def sub(self, name: str, create: bool = False) -> Folder:
        """The subfolder ``name`` (made when ``create``), opened without following a symlink."""
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, dir_fd=self.fd)
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=self.fd)
        except OSError as exc:
            raise _folder_error(self.shown / name, exc) from exc
        child = Folder(fd, self.shown / name)
        self._children.append(child)
        return child

    def exists(self, name: str) -> bool:
        try:
            os.lstat(name, dir_fd=self.fd)
        except FileNotFoundError:
            return False
        return True

    def read_json(self, name: str) -> object | None:
        """The JSON in the regular file ``name`` (not a symlink, never blocking), or None."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PathError.field("output_dir", f"{self.shown / name} cannot be read: {exc.strerror}") from exc
        with open(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise PathError.field("output_dir", f"{self.shown / name} is not a regular file")
            try:
                loaded: object = json.loads(handle.read(1 << 20))
            except ValueError:
                return {}
            return loaded

    def write_atomically(self, name: str, data: bytes) -> None:
        tmp = f".{name}.tmp-{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=self.fd)
        with open(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def create_exclusive(self, name: str, data: bytes) -> bool:
        """Write ``name`` unless it exists; False when it does."""
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=self.fd)  # fmt: skip
        except FileExistsError:
            return False
        with open(fd, "wb") as handle:
            handle.write(data)
        return True

    def unlink(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)

    def close(self) -> None:
        for child in self._children:
            child.close()
        self._children = []
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Folder:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _folder_error(path: Path, exc: OSError) -> PathError:
    if exc.errno in (errno.ELOOP, errno.EMLINK) or (exc.errno == errno.ENOTDIR and os.path.islink(path)):
        rule = "is now a symlink; job outputs are not written through links"
    elif exc.errno == errno.ENOENT:
        rule = "no longer exists"
    elif exc.errno == errno.ENOTDIR:
        rule = "is not a folder"
    else:
        rule = f"cannot be opened: {exc.strerror}"
    return PathError.field("output_dir", f"{path} {rule}")


def open_output_folder(recorded: Path, roots: Sequence[Path]) -> Folder:
    """The job's output folder (a real path, recorded at submit) opened as a directory, if it is
    still that folder: not a symlink, not moved, under ``roots``. PathError on ``output_dir``."""
    try:
        fd = os.open(recorded, _DIR_FLAGS)
    except OSError as exc:
        raise _folder_error(recorded, exc) from exc
    folder = Folder(fd, recorded)
    target = _fd_target(fd)
    if target is None:  # no /proc: compare the resolved path and the inode instead
        real = os.path.realpath(recorded)
        opened, named = os.fstat(fd), os.stat(real)
        target = real if (opened.st_dev, opened.st_ino) == (named.st_dev, named.st_ino) else f"{real} (another)"
    rule = _outside(Path(target), roots, "output_dir") if target == str(recorded) else f"now resolves to {target}"
    if rule:
        folder.close()
        raise PathError.field("output_dir", f"{recorded} {rule}; a job writes only into the folder it was given")
    return folder


def owner(folder: Folder) -> str | None:
    """The tenant that owns the output folder: its owner marker, else the tenant recorded by a
    finished job's ``_SUCCESS.json``; None when neither says."""
    for name in (OWNER_MARKER, SUCCESS_MARKER):
        document = folder.read_json(name)
        if isinstance(document, dict) and isinstance(document.get("tenant"), str):
            return str(document["tenant"])
    return None


def claim(folder: Folder, tenant: str) -> None:
    """Make ``tenant`` the owner of an unowned folder; PermissionDenied if another tenant owns it."""
    current = owner(folder)
    if current is None and folder.create_exclusive(OWNER_MARKER, json.dumps({"tenant": tenant}).encode()):
        return
    current = owner(folder) if current is None else current
    if current != tenant:
        raise PermissionDenied(
            f"output_dir: {folder.shown} holds the outputs of another tenant's jobs; choose another folder"
        )


def write_atomically(path: Path, data: bytes) -> None:
    tmp = temporary_name(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def temporary_name(path: Path) -> Path:
    """A sibling name to write to before ``os.replace``-ing onto ``path``."""
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")


def remove_staging(output_dir: Path, job_id: str, roots: Sequence[Path]) -> None:
    """Delete a job's staged shard outputs, through descriptors: an output folder that is no
    longer the one recorded (a symlink now) is left alone rather than followed."""
    try:
        folder = open_output_folder(output_dir, roots)
    except PathError:
        return
    with folder:
        try:
            staging = folder.sub(STAGING)
        except PathError:
            return
        shutil.rmtree(job_id, ignore_errors=True, dir_fd=staging.fd)
        with contextlib.suppress(OSError):
            os.rmdir(STAGING, dir_fd=folder.fd)  # only when no other job stages here
