"""Errors of the operating system while writing (a full disk, a read-only file system) end in one
line naming the file and the cause, with nothing half-written left behind."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rtprep.artifacts import atomic_output
from rtprep.errors import RtprepError


def _mount(point: Path, options: str) -> bool:
    point.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                          capture_output=True, text=True, check=False)
    return proc.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 kB file system (a tmpfs; needs root, skipped elsewhere)."""
    point = tmp_path / "small_disk"
    if not _mount(point, "size=256k"):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=False)


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    point = tmp_path / "read_only"
    if not _mount(point, "ro,size=64k"):
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=False)


def test_full_disk_is_one_line_and_leaves_nothing(small_disk: Path, tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    subprocess.run([sys.executable, "-m", "rtprep.cli", "demo", "--out", str(demo), "--rows",
                    "20000", "--libs", "208"], check=True, capture_output=True)
    export = next(p for p in (demo / "repo_export").iterdir() if p.is_dir())
    out = small_disk / "merged.parquet"
    proc = subprocess.run([sys.executable, "-m", "rtprep.cli", "merge", "-i", str(export), "-o",
                           str(out)], capture_output=True, text=True, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert str(out) in lines[0] and "no space left on device" in lines[0]
    assert list(small_disk.iterdir()) == []  # nothing half-written, no temporaries


def test_read_only_file_system_is_named(read_only: Path) -> None:
    named = r"report\.txt: cannot write it: read-only file system"
    with pytest.raises(RtprepError, match=named), atomic_output(read_only / "report.txt") as tmp:
        tmp.write_text("x")
    with pytest.raises(RtprepError, match="read-only file system"), \
            atomic_output(read_only / "sub" / "report.txt") as tmp:
        tmp.write_text("x")


def test_other_errors_are_left_alone(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="boom"), atomic_output(tmp_path / "x.txt") as tmp:
        tmp.write_text("x")
        raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []
