"""The README's commands run as written, on the inputs that ship, against a served instance.

The server is the tour's (``GENOSERVE_CONFIG=examples/settings.yaml make serve``: settings file
and embedded worker). The commands run in a scratch folder that links the repository's
``examples/`` and ``tests/`` (so that their relative paths are the README's and their outputs stay
out of the checkout); the clients find the server through ``GENOSERVE_ADDRESS``. Blocks that need a
user's own files ("Serve your own model"), start long-running processes (``make serve``,
``genoserve worker``) or hold placeholders (``JOB_ID``) are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import REPO, ServerProcess

pytestmark = pytest.mark.integration

README = REPO / "README.md"
#: Sections whose shell blocks are run, and lines left out of them (and why).
SECTIONS = ("Install", "A five-minute tour", "Sequence binding", "Variant calling", "Cell segmentation",
            "Single-cell embedding", "Bulk jobs")  # fmt: skip
SKIP_LINES = (
    re.compile(r"^make "),  # setup and the long-running server: the test starts its own
    re.compile(r"^source "),
    re.compile(r"^GENOSERVE_CONFIG=.* make serve"),
    re.compile(r"JOB_ID"),  # a placeholder
    re.compile(r"^genoserve worker "),  # long-running
)


def blocks() -> list[tuple[str, str, str]]:
    """(section, language, text) of every fenced block, in order."""
    found: list[tuple[str, str, str]] = []
    section = ""
    lines = README.read_text().splitlines()
    i = 0
    while i < len(lines):
        heading = re.match(r"^#{2,3} (.+)", lines[i])
        if heading:
            section = heading.group(1).strip()
        fence = re.match(r"^```(\w*)", lines[i])
        if fence:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            found.append((section, fence.group(1), "\n".join(lines[i + 1 : end])))
            i = end
        i += 1
    return found


def commands(text: str) -> list[str]:
    """The block's commands: continuation lines joined, skipped ones left out."""
    joined = re.sub(r"\\\n\s*", "", text)
    return [line for line in joined.splitlines() if line.strip() and not any(p.search(line) for p in SKIP_LINES)]


SHELL = [(s, cmds) for s, lang, text in blocks() if s in SECTIONS and lang == "" and (cmds := commands(text))]
PYTHON = [text for s, lang, text in blocks() if lang == "python" and s == "From Python"]


@pytest.fixture(scope="module")
def tour(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path, dict[str, str]]]:
    root = tmp_path_factory.mktemp("readme")
    for name in ("examples", "tests"):
        (root / name).symlink_to(REPO / name)
    env = {
        # The tour's settings, with the job roots and data where this test can write.
        "GENOSERVE_JOBS__INPUT_ROOTS": f'["{REPO}", "{root}"]',
        "GENOSERVE_JOBS__OUTPUT_ROOTS": f'["{root}"]',
        "GENOSERVE_JOBS__DATA_DIR": str(root / "data"),
        "GENOSERVE_WORKER__METRICS_DIR": str(root / "data" / "metrics"),
        "GENOSERVE_WORKER__METRICS_PORT": "0",
    }
    server = ServerProcess("--config", "examples/settings.yaml", "--with-worker", env=env,
                           log_path=root / "server.log")  # fmt: skip
    with server:
        client_env = {**os.environ, **env, "GENOSERVE_ADDRESS": server.address,
                      "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # fmt: skip
        yield server, root, client_env


def test_every_section_has_commands() -> None:
    assert {s for s, _ in SHELL} >= {"Install", "Sequence binding", "Variant calling", "Cell segmentation",
                                     "Single-cell embedding", "Bulk jobs"}  # fmt: skip
    assert len(PYTHON) == 1


@pytest.mark.parametrize(("section", "lines"), SHELL, ids=[f"{s}-{i}" for i, (s, _) in enumerate(SHELL)])
def test_shell_block_runs_as_written(tour: tuple[ServerProcess, Path, dict[str, str]], section: str,
                                     lines: list[str]) -> None:  # fmt: skip
    server, root, env = tour
    for line in lines:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", line], cwd=root, env=env, capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, f"{section}: {line}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}\n{server.log()}"


def test_python_block_runs_as_written(tour: tuple[ServerProcess, Path, dict[str, str]]) -> None:
    server, root, env = tour
    [code] = PYTHON
    assert '"localhost:50051"' in code
    code = code.replace('"localhost:50051"', repr(server.address))
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
