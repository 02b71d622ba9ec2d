"""Crash-safe writes (gctnet.fileio) and the writers that use them."""

from __future__ import annotations

import json
import os

import pytest

from gctnet import fileio
from gctnet.experiments.stats import write_csv


def test_atomic_write_text_replaces_the_file_whole(tmp_path):
    path = tmp_path / "report.md"
    fileio.atomic_write_text(path, "first\n")
    assert fileio.atomic_write_text(path, "second\nüber\n") == path
    assert path.read_text(encoding="utf-8") == "second\nüber\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]  # no temporary left
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~umask  # as a plainly created file


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "summary.json"
    fileio.atomic_write_text(path, json.dumps({"ok": 1}))

    def broken(fh):
        fh.write(b'{"half": ')
        raise KeyboardInterrupt  # an interrupt mid-write, not only an Exception

    with pytest.raises(KeyboardInterrupt):
        fileio.atomic_write(path, broken)
    assert json.loads(path.read_text()) == {"ok": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_atomic_write_needs_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        fileio.atomic_write_text(tmp_path / "missing" / "x.txt", "x")


def test_write_csv_is_atomic_and_writes_empty_cells(tmp_path, monkeypatch):
    path = tmp_path / "runs.csv"
    write_csv(path, ["a", "b"], [{"a": 1, "b": float("nan")}, {"a": None}])
    assert path.read_text().splitlines() == ["a,b", "1,", ","]

    def fail(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        write_csv(path, ["a"], [{"a": 2}])
    assert path.read_text().splitlines() == ["a,b", "1,", ","]  # the previous table survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.csv"]


def test_plots_are_written_as_real_images(tmp_path):
    pytest.importorskip("matplotlib")
    from gctnet.analysis.plots import _figure, _save

    fig, ax = _figure(3)
    ax.plot([0, 1, 2], [1, 0, 1])
    png = _save(fig, tmp_path / "sub" / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig, ax = _figure(3)
    ax.plot([0, 1], [0, 1])
    svg = _save(fig, tmp_path / "curve.svg")
    assert b"<svg" in svg.read_bytes()[:2000]
    assert not [p for p in tmp_path.rglob(".*tmp*")]
