"""Token table: file format, tenants, and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from genoserve.api.auth import TokenTable
from genoserve.core.errors import Unauthenticated
from genoserve.core.settings import SettingsError


def test_tokens_file_maps_tokens_to_tenants(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# ops\nsecret-a lab-a\nsecret-b   # no tenant\n\n")
    table = TokenTable.load(path)
    assert table.authenticate("Bearer secret-a") == "lab-a"
    assert table.authenticate("bearer secret-b") == "default"


@pytest.mark.parametrize("header", [None, "", "secret-a", "Basic secret-a", "Bearer ", "Bearer wrong"])
def test_missing_or_wrong_tokens_are_refused(tmp_path: Path, header: str | None) -> None:
    path = tmp_path / "tokens"
    path.write_text("secret-a lab-a\n")
    with pytest.raises(Unauthenticated):
        TokenTable.load(path).authenticate(header)


def test_bad_tokens_file_is_a_settings_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    with pytest.raises(SettingsError, match="no tokens"):
        TokenTable.load(empty)
    (tmp_path / "bad").write_text("a b c\n")
    with pytest.raises(SettingsError, match="line 1"):
        TokenTable.load(tmp_path / "bad")
