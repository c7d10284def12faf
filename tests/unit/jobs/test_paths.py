"""Job paths stay under the allowed roots: no '..', no symlinks out."""

from __future__ import annotations

from pathlib import Path

import pytest

from genoserve.core.errors import InvalidArgument
from genoserve.jobs.paths import confine


def test_paths_under_a_root_resolve(tmp_path: Path) -> None:
    (tmp_path / "in.npy").write_bytes(b"x")
    assert confine(str(tmp_path / "in.npy"), [tmp_path], "inputs[0]", must_exist=True) == (tmp_path / "in.npy")
    assert confine("in.npy", [tmp_path], "inputs[0]", must_exist=True) == tmp_path / "in.npy"  # relative
    assert confine(str(tmp_path / "new" / "out"), [tmp_path], "output_dir", must_exist=False) == tmp_path / "new/out"


def test_dotdot_is_refused_even_when_it_stays_inside(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with pytest.raises(InvalidArgument) as info:
        confine(str(tmp_path / "a" / ".." / "a"), [tmp_path], "output_dir", must_exist=False)
    assert info.value.violations[0].field == "output_dir"
    assert "'..'" in info.value.violations[0].description


def test_outside_and_symlinks_out_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "secret.npy"
    outside.write_bytes(b"x")
    (root / "link.npy").symlink_to(outside)
    with pytest.raises(InvalidArgument, match="outside the allowed roots"):
        confine(str(outside), [root], "inputs[0]", must_exist=True)
    with pytest.raises(InvalidArgument, match="outside the allowed roots") as info:
        confine(str(root / "link.npy"), [root], "inputs[1]", must_exist=True)
    assert info.value.violations[0].field == "inputs[1]"
    with pytest.raises(InvalidArgument, match="does not exist"):
        confine(str(root / "missing.npy"), [root], "inputs[0]", must_exist=True)
    with pytest.raises(InvalidArgument, match="is required"):
        confine("", [root], "output_dir", must_exist=False)
