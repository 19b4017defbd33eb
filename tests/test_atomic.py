"""geomtrace._atomic: every atomically written file gets the mode a plain open() would."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from geomtrace._atomic import atomic_write_text, current_umask


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    """Set a umask for one test and restore the previous one."""
    previous = os.umask(0o022)
    os.umask(previous)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(previous)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_new_files_honour_the_umask(tmp_path, umask, mask):
    umask(mask)
    assert current_umask() == mask
    written = atomic_write_text(tmp_path / "run.json", "{}")
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    assert _mode(written) == _mode(plain) == 0o666 & ~mask  # was 0600 whatever the umask


def test_a_replaced_file_keeps_its_mode(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "results.json"
    target.write_text("old")
    target.chmod(0o640)
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and _mode(target) == 0o640


def test_figures_and_store_files_honour_the_umask(tmp_path, umask):
    pytest.importorskip("matplotlib")
    from geomtrace.plots import _pyplot, save_figure
    from geomtrace.replay.store import _exclusive_write_text

    umask(0o027)
    fig = _pyplot().figure()
    path = save_figure(fig, tmp_path / "f.png")
    assert _mode(path) == 0o640
    assert _exclusive_write_text(tmp_path / "run.json", "{}") and _mode(tmp_path / "run.json") == 0o640
