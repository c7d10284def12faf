"""Generate genoserve's Python stubs from protos/: the one place that runs protoc.

Called by the package build (setup.py's build_py, so ``pip wheel .`` from a clean checkout
yields a complete package) and by ``make protos`` (into the source tree, for development):

    python protos/generate.py OUT_DIR [--mypy]

Every ``protos/genoserve/<package>/*.proto`` becomes ``OUT_DIR/genoserve/<package>/*_pb2.py``;
a package with at least one ``service`` also gets ``*_pb2_grpc.py`` for each of its files (the
``genoserve.v1`` API); message-only packages (``genoserve.tfexample``, ``genoserve.nucleus``) do
not. ``--mypy`` adds the typed ``.pyi`` stubs (needs mypy-protobuf's ``protoc-gen-mypy`` plugins
on PATH). Each generated package gets an empty ``__init__.py``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

PROTOS = Path(__file__).resolve().parent
_SERVICE = re.compile(r"^\s*service\s+\w+\s*\{", re.MULTILINE)


def packages(root: Path = PROTOS) -> dict[str, list[Path]]:
    """Proto package folder (``genoserve/v1``) -> its .proto files, sorted."""
    found: dict[str, list[Path]] = {}
    for proto in sorted(root.glob("genoserve/*/*.proto")):
        found.setdefault(proto.parent.relative_to(root).as_posix(), []).append(proto)
    return found


def has_services(files: list[Path]) -> bool:
    return any(_SERVICE.search(path.read_text()) for path in files)


def expected_modules(root: Path = PROTOS) -> list[str]:
    """Every module the stubs must provide (``genoserve.v1.models_pb2_grpc``, ...), for checks."""
    modules: list[str] = []
    for package, files in packages(root).items():
        dotted = package.replace("/", ".")
        modules.append(dotted)
        grpc = has_services(files)
        for path in files:
            modules.append(f"{dotted}.{path.stem}_pb2")
            if grpc:
                modules.append(f"{dotted}.{path.stem}_pb2_grpc")
    return modules


def generate(out: Path, mypy: bool = False, root: Path = PROTOS) -> list[Path]:
    """Run protoc (grpcio-tools) for every package under ``root``; returns the package folders."""
    from grpc_tools import protoc  # a build requirement, not a run-time one

    include = str(Path(protoc.__file__).parent / "_proto")  # google/protobuf/*.proto
    if mypy and shutil.which("protoc-gen-mypy") is None:
        raise SystemExit("--mypy needs protoc-gen-mypy on PATH (pip install mypy-protobuf)")
    written: list[Path] = []
    for package, files in packages(root).items():
        target = out / package
        target.mkdir(parents=True, exist_ok=True)
        args = [f"-I{root}", f"-I{include}", f"--python_out={out}"]
        if has_services(files):
            args.append(f"--grpc_python_out={out}")
        if mypy:
            args.append(f"--mypy_out={out}")
            if has_services(files):
                args.append(f"--mypy_grpc_out={out}")
        code = protoc.main(["grpc_tools.protoc", *args, *(str(path) for path in files)])
        if code != 0:
            raise SystemExit(f"protoc failed ({code}) on {package}")
        (target / "__init__.py").touch()
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder that holds the genoserve package (services/)")
    parser.add_argument("--mypy", action="store_true", help="also write .pyi stubs (mypy-protobuf)")
    args = parser.parse_args(argv)
    for folder in generate(args.out, mypy=args.mypy):
        print(f"generated {folder}")


if __name__ == "__main__":
    main(sys.argv[1:])
