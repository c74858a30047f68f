"""`toka demo` stops before starting anything when this machine cannot run it as designed."""

from __future__ import annotations

from pathlib import Path

import pytest

from toka.console import demo
from toka.tools import sandbox


def test_without_landlock_the_demo_stops_first_and_says_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The one stand-in: a kernel without Landlock cannot be had on this machine.
    monkeypatch.setattr(sandbox, "abi_version", lambda: 0)
    assert demo.run(tmp_path / "state") == 2
    out = capsys.readouterr().out
    assert "Landlock" in out
    assert not (tmp_path / "state").exists()  # nothing was started
