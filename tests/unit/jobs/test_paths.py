"""Job paths stay under the allowed roots: no '..', no symlinks out, no FIFOs, no OS-limit
breaking names; checked at submit and again where a job opens or writes them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from genoserve.core.errors import InvalidArgument, PermissionDenied
from genoserve.jobs.paths import (
    STAGING,
    SUCCESS_MARKER,
    PathError,
    claim,
    confine,
    folder_files,
    input_file,
    name_patterns,
    open_output_folder,
    owner,
    remove_staging,
)


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


def test_outside_the_roots_names_the_setting_and_how_to_set_it(tmp_path: Path) -> None:
    """A newcomer's first job usually names a file outside the server's working directory."""
    root, data, results = tmp_path / "root", tmp_path / "data", tmp_path / "results"
    for folder in (root, data):
        folder.mkdir()
    (data / "rows.npy").write_bytes(b"x")
    with pytest.raises(InvalidArgument) as info:
        confine(str(data / "rows.npy"), [root], "inputs[0]", must_exist=True)
    [violation] = info.value.violations
    assert violation.description == (
        f"{str(data / 'rows.npy')!r} resolves to {data / 'rows.npy'}, outside the allowed roots ({root}), "
        f"setting jobs.input_roots; to allow {data}, start the server and the workers with "
        f'GENOSERVE_JOBS__INPUT_ROOTS=\'["{root}", "{data}"]\' (or jobs.input_roots in the --config YAML file)'
    )
    with pytest.raises(InvalidArgument) as info:
        confine(str(results / "out"), [root], "output_dir", must_exist=False)
    assert "setting jobs.output_roots; to allow" in info.value.message
    assert f'GENOSERVE_JOBS__OUTPUT_ROOTS=\'["{root}", "{results}"]\'' in info.value.message
    with pytest.raises(PathError, match=r"setting jobs\.input_roots; .*GENOSERVE_JOBS__INPUT_ROOTS="):
        input_file(data / "rows.npy", [root], "params[bed]")


def test_path_text_the_os_cannot_take_is_refused_naming_the_field(tmp_path: Path) -> None:
    cases = [
        (str(tmp_path / "a\0b.npy"), "NUL"),
        (str(tmp_path / ("x" * 256)), "NAME_MAX"),
        (str(tmp_path) + "/d" * 2100, "PATH_MAX"),
    ]
    for raw, rule in cases:
        for must_exist in (True, False):
            with pytest.raises(PathError) as info:
                confine(raw, [tmp_path], "inputs[3]", must_exist=must_exist)
            assert info.value.violations[0].field == "inputs[3]"
            assert rule in info.value.violations[0].description


def test_a_fifo_is_refused_without_being_opened(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.tif")
    os.mkfifo(tmp_path / "folder-pipe.tif")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "pipe.tif").symlink_to(tmp_path / "folder-pipe.tif")
    # Opening a FIFO for reading blocks until a writer comes: each check below would hang.
    with pytest.raises(PathError, match=r"inputs\[0\]: '.*pipe.tif' is a FIFO, not a regular file or a folder"):
        confine(str(tmp_path / "pipe.tif"), [tmp_path], "inputs[0]", must_exist=True)
    with pytest.raises(PathError, match=r"pipe.tif is a FIFO, not a regular file"):
        input_file(tmp_path / "pipe.tif", [tmp_path])
    with pytest.raises(PathError, match=r"sub/pipe.tif is a FIFO"):
        folder_files(tmp_path / "sub", ["*.tif"], [tmp_path])


def test_an_input_swapped_for_a_symlink_after_submit_is_refused_when_opened(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.tif").write_bytes(b"s")
    (root / "in.tif").write_bytes(b"x")
    submitted = confine(str(root / "in.tif"), [root], "inputs[0]", must_exist=True)
    assert input_file(submitted, [root]) == submitted
    (root / "in.tif").unlink()
    (root / "in.tif").symlink_to(outside / "secret.tif")
    with pytest.raises(PathError, match=r"in.tif resolves to .*secret.tif, outside the allowed roots"):
        input_file(submitted, [root])


def test_folder_members_are_confined_and_globs_stay_in_the_folder(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "imgs" / "sub").mkdir(parents=True)
    outside.mkdir()
    for name in ("b.tif", "a.png", "notes.txt", "sub/c.tif"):
        (root / "imgs" / name).write_bytes(b"x")
    (outside / "secret.tif").write_bytes(b"s")
    assert folder_files(root / "imgs", ["*.tif", "*.png"], [root]) == [root / "imgs" / "a.png", root / "imgs" / "b.tif"]
    for pattern in ("../../outside/*.tif", "/etc/*", "sub/*.tif", "..", "*.tif,../x"):
        with pytest.raises(PathError) as info:
            name_patterns(pattern, "params[pattern]")
        assert info.value.violations[0].field == "params[pattern]"
    assert name_patterns(" *.tif , *.png ", "params[pattern]") == ["*.tif", "*.png"]
    (root / "imgs" / "z.tif").symlink_to(outside / "secret.tif")
    with pytest.raises(PathError, match=r"z.tif resolves to .*, outside the allowed roots"):
        folder_files(root / "imgs", ["*.tif"], [root], "inputs[2]")


def test_output_folder_writes_go_to_the_folder_recorded_or_nowhere(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "out").mkdir(parents=True)
    outside.mkdir()
    with open_output_folder(root / "out", [root]) as folder:
        (folder.path / "a.txt").write_text("through the descriptor")
        assert folder.recorded(folder.path / "a.txt") == root / "out" / "a.txt"
        assert folder.unmask(f"cannot write {folder.path / 'b'}") == f"cannot write {root / 'out' / 'b'}"
        # Swapped for a symlink while open: writes still land in the folder that was opened.
        (root / "out").rename(root / "moved")
        (root / "out").symlink_to(outside)
        (folder.path / "b.txt").write_text("still here")
    assert sorted(p.name for p in (root / "moved").iterdir()) == ["a.txt", "b.txt"]
    assert list(outside.iterdir()) == []
    with pytest.raises(PathError, match=r"output_dir: .*out is now a symlink"):
        open_output_folder(root / "out", [root])
    (root / "out").unlink()
    (root / "real").mkdir()
    (root / "link").symlink_to(root / "real")
    (root / "parent").symlink_to(outside)
    (outside / "out").mkdir()
    with pytest.raises(PathError, match="now resolves to"):
        open_output_folder(root / "parent" / "out", [root])
    with pytest.raises(PathError, match="no longer exists"):
        open_output_folder(root / "gone", [root])


def test_staging_is_not_removed_through_a_symlinked_output_folder(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    (outside / STAGING / "j1").mkdir(parents=True)
    (outside / STAGING / "j1" / "keep").write_text("not ours")
    (root / "out").symlink_to(outside)
    remove_staging(root / "out", "j1", [root])
    assert (outside / STAGING / "j1" / "keep").exists()
    (root / "mine" / STAGING / "j2").mkdir(parents=True)
    (root / "mine" / STAGING / "j2" / "part").write_text("ours")
    remove_staging(root / "mine", "j2", [root])
    assert list((root / "mine").iterdir()) == []


def test_an_output_folder_belongs_to_the_tenant_that_first_wrote_it(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with open_output_folder(tmp_path / "out", [tmp_path]) as folder:
        assert owner(folder) is None
        claim(folder, "lab-a")
        claim(folder, "lab-a")  # again: fine
        assert owner(folder) == "lab-a"
        with pytest.raises(PermissionDenied, match=r"output_dir: .*out holds the outputs of another tenant"):
            claim(folder, "lab-b")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / SUCCESS_MARKER).write_text(json.dumps({"job": "j1", "tenant": "lab-b"}))
    with open_output_folder(tmp_path / "old", [tmp_path]) as folder:
        assert owner(folder) == "lab-b"  # a finished job's manifest says whose it is
        with pytest.raises(PermissionDenied):
            claim(folder, "lab-a")
