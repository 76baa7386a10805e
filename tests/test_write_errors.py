"""Errors of the operating system while writing (a full disk, a read-only file system) end in one
line naming the file and the cause, with nothing half-written left behind."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rtprep.core.artifacts import atomic_output
from rtprep.core.errors import RtprepError


def _mounted(point: Path, options: str, what: str) -> Iterator[Path]:
    """A tmpfs mounted at ``point`` for the test (needs root: skipped elsewhere)."""
    point.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount {what} here (needs root)")
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 kB file system."""
    yield from _mounted(tmp_path / "small_disk", "size=256k", "a small tmpfs")


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    yield from _mounted(tmp_path / "read_only", "ro,size=64k", "a read-only tmpfs")


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


@pytest.fixture
def read_only_export(tmp_path: Path) -> Iterator[Path]:
    """A small demo export (one lib) behind a read-only bind mount (needs root)."""
    src = tmp_path / "src"
    subprocess.run([sys.executable, "-m", "rtprep.cli", "demo", "--out", str(src), "--rows",
                    "20000", "--libs", "208"], check=True, capture_output=True)
    point = tmp_path / "ro"
    point.mkdir()
    bind = subprocess.run(["mount", "--bind", str(src), str(point)], capture_output=True,
                          check=False)
    if bind.returncode != 0:
        pytest.skip("cannot bind-mount here (needs root)")
    ro = subprocess.run(["mount", "-o", "remount,ro,bind", str(point)], capture_output=True,
                        check=False)
    try:
        if ro.returncode != 0:
            pytest.skip("cannot remount read-only here")
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=False)


def test_out_dir_builds_from_a_read_only_export(read_only_export: Path, tmp_path: Path) -> None:
    from rtprep.core.settings import default
    from tests.workflow_util import copy_workflow, snakemake

    wd = copy_workflow(tmp_path / "wd")
    export = "5684639a28c04bc5af7c4fd1a75e62b5"
    out = tmp_path / "out"
    before = sorted(p.relative_to(read_only_export) for p in read_only_export.rglob("*"))
    overlay = {"data_dir": str(read_only_export / "repo_export"), "exports": [export],
               "libs": "all", "caps": [5], "n_clusters": 4, "out_dir": str(out),
               "embeddings": {"source": "file", "path": str(
                   read_only_export / "resources/metabolites/embeddings_chemberta_pca20.parquet")},
               "model": {"train": False, "evaluate": False}}
    assert default("out_dir") is None  # by default outputs stay beside the inputs
    target = out / f"merged_training_{export}_lib208_cap5_chemclass_rt_prod.csv"
    snakemake(wd, "--cores", "2", str(target), overlay=overlay)
    assert target.is_file() and (out / "chem_classes_k4.parquet").is_file()
    assert (out / "logs" / "merge" / f"{export}.log").is_file()
    assert not (wd / "logs").exists() and not (wd / "results").exists()
    after = sorted(p.relative_to(read_only_export) for p in read_only_export.rglob("*"))
    assert after == before  # the export was only read
