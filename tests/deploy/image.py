"""Build a final stage of deploy/docker/Dockerfile as a folder, the way the Dockerfile builds it.

There is no container engine on the CI machines, so the image's environment is reproduced from
the Dockerfile's own text: its build-stage ``RUN`` lines are run (``pip wheel``, ``python -m venv``,
``pip install -r requirements.txt onnxruntime==...``), its ``COPY`` lines copy what the build
context holds (deploy/docker/Dockerfile.dockerignore applied), and its final stage's ``ENV``,
``WORKDIR``, ``USER``, ``ENTRYPOINT`` and ``CMD`` say how a process starts. What is changed, and
only this: every absolute path of the image becomes the same path under ``root/fs``; ``python``
is this machine's base interpreter (the same minor version as the image's); pip may use its
cache (``--no-cache-dir`` is dropped: it changes what is downloaded, not what is installed);
``groupadd``/``useradd`` of the final stage are not run (the processes get the ``USER`` uid
directly). An instruction or final-stage command this module does not know fails the build, so
a Dockerfile change that the emulation would miss cannot pass unnoticed.

A target built ``FROM`` another final stage (``FROM cpu AS cpu-models``) is that image plus its own
instructions: ``LocalImage.derive`` builds it from an image already built, whose files it shares
(hard links, as the image shares the layers below its own), without building the venv again.

Running processes as the image's uid and owning files as the Dockerfile says (``--chown``,
``chown -R``) needs root: as any other user the build still runs, unowned, and whatever would run
as the image's user is skipped, with the reason, rather than run as the wrong one.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.manifests import DEPLOY, REPO

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "docker" / "Dockerfile.dockerignore"
#: A path in a Dockerfile argument: a slash not preceded by a word, a dot, a slash or a colon
#: (so that ``http://`` and relative paths stay as they are).
_ABSOLUTE = re.compile(r"(?<![\w./:$-])/(?=[\w.])")


@dataclass(frozen=True)
class Instruction:
    op: str
    args: str


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def dependencies(self) -> set[str]:
        """Stages this one copies from (``COPY --from``); its ``FROM`` stage is ``base``."""
        return {m for i in self.instructions if i.op == "COPY" for m in re.findall(r"--from=(\S+)", i.args)}


def parse(path: Path = DOCKERFILE) -> dict[str, Stage]:
    """Stages by name, in file order; continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        op, _, args = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            base, _, name = args.partition(" AS ")
            current = stages.setdefault(name.strip(), Stage(name.strip(), base.strip()))
        elif current is None:
            assert op == "ARG", f"{path}: {op} before the first FROM"
        else:
            current.instructions.append(Instruction(op, " ".join(args.split())))
    return stages


def ignored(relative: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern that matches the path or a parent wins."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        regex = re.compile(
            "^"
            + "".join(
                ".*" if tok == "**" else "[^/]*" if tok == "*" else "[^/]" if tok == "?" else re.escape(tok)
                for tok in re.split(r"(\*\*|\*|\?)", body.strip("/"))
            )
            + "$"
        )
        if any(regex.match(c) for c in candidates):
            result = not negate
    return result


def dockerignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def context_files(source: str) -> list[Path]:
    """The files of the build context under ``source`` (relative to the repository root)."""
    patterns = dockerignore_patterns()
    top = REPO / source
    found = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
    return [p for p in found if not ignored(p.relative_to(REPO).as_posix(), patterns)]


def link_tree(source: Path, target: Path) -> None:
    """``target`` made a copy of ``source``: folders with their modes (and owners, as root), files
    as hard links (the same files, no second copy), symbolic links as they are; where a ``bin/``
    script's ``#!`` line or a link names a path under ``source``, it names the one under ``target``
    (a new file in place of the link)."""
    old, new = str(source), str(target)
    shebang = f"#!{old}/".encode()
    owners = os.geteuid() == 0
    folders: list[tuple[Path, Path]] = []
    target.mkdir(parents=True, exist_ok=True)
    for folder, dirs, files in os.walk(source):
        here = Path(folder)
        there = target / here.relative_to(source)
        there.mkdir(exist_ok=True)
        folders.append((here, there))
        for name in [*dirs, *files]:
            path, place = here / name, there / name
            stat = path.lstat()
            if path.is_symlink():
                pointed = os.readlink(path)
                os.symlink(new + pointed[len(old) :] if pointed.startswith(old + "/") else pointed, place)
            elif name not in files:
                continue  # a folder: made by its own turn of the walk
            elif here.name == "bin" and path.read_bytes()[: len(shebang)] == shebang:
                place.write_bytes(f"#!{new}/".encode() + path.read_bytes()[len(shebang) :])
                shutil.copystat(path, place)
            else:
                os.link(path, place)
                continue  # the same file: same owner
            if owners:
                os.lchown(place, stat.st_uid, stat.st_gid)
    for here, there in reversed(folders):  # modes last: a read-only folder is filled first
        stat = here.stat()
        there.chmod(stat.st_mode & 0o7777)
        if owners:
            os.chown(there, stat.st_uid, stat.st_gid)


class LocalImage:
    """One final stage (``cpu``, ``cpu-models``, ...) built under ``root``: ``fs`` is its root
    filesystem."""

    def __init__(self, root: Path, target: str = "cpu") -> None:
        self.root = root
        self.fs = root / "fs"
        self.stages = parse()
        self.target = target
        self.workdir = "/"
        self.env: dict[str, str] = {}
        self.user: tuple[int, int] | None = None
        self.entrypoint: list[str] = []
        self.cmd: list[str] = []
        self.exposed: list[int] = []
        self.copied: list[str] = []  # context sources, as the COPY lines name them
        #: Whether files got the owners the Dockerfile gives them (``--chown``, ``chown -R``): as root.
        self.owned = os.geteuid() == 0
        self.log = root / "build.log"
        self._shims = root / "shims"

    # -- paths ----------------------------------------------------------------------------------------

    def local(self, text: str) -> str:
        """Every absolute path in ``text`` moved under the image's root filesystem."""
        return _ABSOLUTE.sub(lambda _: str(self.fs) + "/", text)

    def path(self, image_path: str, cwd: str = "/") -> Path:
        absolute = image_path if image_path.startswith("/") else os.path.join(cwd, image_path)
        return self.fs / absolute.lstrip("/")

    # -- build ------------------------------------------------------------------------------------------

    def layers(self) -> list[str]:
        """The target and the stages it is built ``FROM``, the first one on a base image first."""
        names = [self.target]
        while self.stages[names[0]].base in self.stages:
            names.insert(0, self.stages[names[0]].base)
        return names

    def order(self) -> list[Stage]:
        needed: set[str] = set()

        def visit(name: str) -> None:
            if name not in needed:
                needed.add(name)
                stage = self.stages[name]
                for dep in stage.dependencies() | ({stage.base} if stage.base in self.stages else set()):
                    visit(dep)

        visit(self.target)
        return [stage for name, stage in self.stages.items() if name in needed]

    def build(self, built: frozenset[str] = frozenset()) -> LocalImage:
        """Every stage the target needs but those in ``built`` (already in ``fs``)."""
        self.fs.mkdir(parents=True, exist_ok=True)
        (self.fs / "tmp").mkdir(exist_ok=True)
        (self.fs / "tmp").chmod(0o1777)
        self._write_shims()
        layers = self.layers()
        for stage in self.order():
            if stage.name not in built:
                self._build_stage(stage, final=stage.name in layers)
        return self

    def derive(self, target: str, root: Path) -> LocalImage:
        """Target ``target``, built ``FROM`` this image's target, under ``root``: this image's files
        (``link_tree``) and what the stages this one lacks add. This image stays as it was."""
        image = LocalImage(root, target)
        assert self.target in image.layers(), f"{target} is not built FROM {self.target}"
        link_tree(self.fs, image.fs)
        image.workdir, image.env, image.user = self.workdir, dict(self.env), self.user
        image.entrypoint, image.cmd, image.exposed = list(self.entrypoint), list(self.cmd), list(self.exposed)
        image.copied = list(self.copied)
        return image.build(built=frozenset(stage.name for stage in self.order()))

    def _write_shims(self) -> None:
        """``python``/``python3``/``pip`` as the image's base interpreter has them."""
        base = base_interpreter(self.user_can_run)
        self._shims.mkdir(parents=True, exist_ok=True)
        for name in ("python", "python3"):
            link = self._shims / name
            link.unlink(missing_ok=True)
            link.symlink_to(base)
        pip = self._shims / "pip"
        pip.write_text(f'#!/bin/sh\nexec "{base}" -m pip "$@"\n')
        pip.chmod(0o755)

    def user_can_run(self, path: Path) -> bool:
        """Whether the image's USER could run ``path`` (every folder above it searchable by others)."""
        if os.geteuid() != 0:
            return os.access(path, os.X_OK)
        resolved = path.resolve()
        folders_ok = all(folder.stat().st_mode & 0o001 for folder in resolved.parents)
        return folders_ok and bool(resolved.stat().st_mode & 0o001)

    def _build_stage(self, stage: Stage, final: bool) -> None:
        """``final``: a stage of the image itself (the target or one it is built ``FROM``): it
        goes on from the one below (WORKDIR, ENV), and what it leaves is the image's."""
        on_layer = final and stage.base in self.stages
        workdir = self.workdir if on_layer else "/"
        env: dict[str, str] = dict(self.env) if on_layer else {}
        for instruction in stage.instructions:
            op, args = instruction.op, instruction.args
            if op == "WORKDIR":
                workdir = args
                self.path(workdir).mkdir(parents=True, exist_ok=True)
            elif op == "COPY":
                self._copy(args, workdir)
            elif op == "RUN":
                if final:
                    self._final_run(args)
                else:
                    self._run(args, workdir, env)
            elif op == "ENV":
                for name, value in re.findall(r"(\w+)=(\S+)", args):
                    env[name] = value
            elif op == "USER":
                uid, _, gid = args.partition(":")
                self.user = (int(uid), int(gid or uid))
            elif op == "ENTRYPOINT":
                self.entrypoint = json.loads(args)
            elif op == "CMD":
                self.cmd = json.loads(args)
            elif op == "EXPOSE":
                self.exposed = [int(p) for p in args.split()]
            elif op == "ARG":
                pass  # build arguments only choose base images here
            else:
                raise AssertionError(f"Dockerfile stage {stage.name}: {op} is not emulated by tests/deploy/image.py")
        if final:
            self.workdir = workdir
            self.env = env

    def _copy(self, args: str, workdir: str) -> None:
        words = args.split()
        flags = [w for w in words if w.startswith("--")]
        sources, dest = [w for w in words if not w.startswith("--")][:-1], words[-1]
        unknown = [f for f in flags if not f.startswith(("--from=", "--chown="))]
        assert not unknown, f"COPY {args}: flags {unknown} are not emulated"
        from_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
        chown = next((f.split("=", 1)[1] for f in flags if f.startswith("--chown=")), None)
        target = self.path(dest, workdir)
        into_folder = dest.endswith("/") or len(sources) > 1
        for source in sources:  # Docker: a folder's contents go into dest, a file goes to (or into) dest
            if from_stage is not None:
                origin = self.path(source)
                place = target / origin.name if into_folder and origin.is_file() else target
                if origin.resolve() != place.resolve():
                    shutil.copytree(origin, place, dirs_exist_ok=True, symlinks=True)
                continue
            self.copied.append(source)
            files = context_files(source)
            assert files, f"COPY {source}: nothing in the build context"
            folder = (REPO / source).is_dir()
            for file in files:
                if folder:
                    place = target / file.relative_to(REPO / source)
                else:
                    place = target / file.name if into_folder else target
                place.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, place)
            if chown is not None:
                self._chown(chown, [str(target)])

    def _run(self, command: str, workdir: str, env: dict[str, str]) -> None:
        local = self.local(command).replace(" --no-cache-dir", "")
        environment = {**os.environ, **{k: self.local(v) for k, v in env.items()}}
        environment["PATH"] = f"{self._shims}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        environment.pop("VIRTUAL_ENV", None)
        with open(self.log, "a") as log:
            log.write(f"$ {local}\n")
            log.flush()
            result = subprocess.run(
                ["/bin/sh", "-c", local], cwd=self.path(workdir), env=environment, stdout=log, stderr=subprocess.STDOUT
            )
        if result.returncode != 0:
            raise AssertionError(f"RUN {command}: exit {result.returncode}\n{self.log.read_text()[-4000:]}")

    def _final_run(self, command: str) -> None:
        """The final stage prepares the user's folders; nothing else is allowed to run there."""
        for part in (p.strip() for p in command.split("&&")):
            words = shlex.split(part)
            if words[0] in ("groupadd", "useradd"):
                continue
            if words[:2] == ["mkdir", "-p"]:
                for folder in words[2:]:
                    self.path(folder).mkdir(parents=True, exist_ok=True)
            elif words[:2] == ["chown", "-R"]:
                self._chown(words[2], words[3:])
            else:
                raise AssertionError(f"final stage RUN {part!r} is not emulated by tests/deploy/image.py")

    def _chown(self, owner: str, paths: list[str]) -> None:
        uid_text, _, gid_text = owner.partition(":")
        uid = 0 if uid_text == "root" else int(uid_text)
        gid = 0 if (gid_text or uid_text) == "root" else int(gid_text or uid_text)
        if not self.owned:
            return  # only root gives files away: whatever runs as the image's user is skipped
        for name in paths:
            top = Path(name) if Path(name).is_relative_to(self.fs) else self.path(name)
            for path in [top, *top.rglob("*")]:
                os.lchown(path, uid, gid)

    # -- run --------------------------------------------------------------------------------------------

    @property
    def bin(self) -> Path:
        return self.fs / "opt" / "venv" / "bin"

    def process_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The image's ENV (paths localised, ``$PATH`` the host's), plus ``extra``."""
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        env = dict(base)
        for name, value in self.env.items():
            env[name] = self.local(value).replace("$PATH", base["PATH"])
        env["HOME"] = str(self.path(self.workdir))
        return {**env, **(extra or {})}

    def as_user(self) -> dict[str, Any]:
        """``subprocess`` arguments that run a process as the image's USER; a test run that may not
        switch to it (not root) is skipped here, with the reason, instead of running as itself."""
        assert self.user is not None, f"{self.target}: no USER"
        if not self.can_switch_user:
            pytest.skip(
                f"the image runs as uid {self.user[0]} and owns its files as the Dockerfile says; this test run "
                f"(uid {os.geteuid()}) can do neither: run it as root, as CI does"
            )
        return {"user": self.user[0], "group": self.user[1], "extra_groups": []}

    def popen(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``ENTRYPOINT + argv`` as the image's USER."""
        user = self.as_user()
        entry = [str(self.bin / self.entrypoint[0]) if "/" not in self.entrypoint[0] else self.entrypoint[0]]
        handle = open(log, "ab")  # noqa: SIM115 - owned by the child process
        return subprocess.Popen(
            [*entry, *self.entrypoint[1:], *argv],
            cwd=self.path(self.workdir),
            env=self.process_env(env),
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **user,
        )

    @property
    def can_switch_user(self) -> bool:
        return self.user is not None and self.owned

    def python(self, code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``code`` with the image's interpreter, as its USER."""
        user = self.as_user()
        return subprocess.run(
            [str(self.bin / "python"), "-c", code],
            cwd=self.path(self.workdir),
            env=self.process_env(env),
            capture_output=True,
            text=True,
            **user,
        )


def base_interpreter(runnable: Callable[[Path], bool]) -> Path:
    """An interpreter of this Python's minor version (the image's) that the image's USER can run.

    This one first; a venv made from an interpreter under /root (pyenv) cannot be run by uid
    10001, so then the system's ``/usr/bin/python3.X`` (Debian's python3-venv).
    """
    minor = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [Path(getattr(sys, "_base_executable", sys.executable)), Path("/usr/bin") / minor,
                  Path("/usr/local/bin") / minor]  # fmt: skip
    for candidate in candidates:
        if candidate.exists() and runnable(candidate):
            return candidate
    raise AssertionError(f"no {minor} that the image's user can run among {candidates}: run `make setup`")


def pinned(requirement: str, text: str) -> str:
    """The version ``text`` pins for ``requirement`` (``onnxruntime==1.32.0`` -> ``1.32.0``)."""
    found = set(re.findall(rf"(?<![\w-]){re.escape(requirement)}==([\w.]+)", text))
    assert len(found) == 1, f"{requirement}: expected one pinned version, found {sorted(found)}"
    return found.pop()
