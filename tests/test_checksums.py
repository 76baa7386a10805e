"""Checksums in the sidecars: outputs hashed while written, inputs' checksums taken from their
own sidecars (no file re-read only to hash it), files without a sidecar hashed."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest

import rtprep.core.artifacts as artifacts
from rtprep.core.artifacts import (
    RowAccount,
    atomic_output,
    describe_inputs,
    file_checksum,
    hashed_file,
    read_meta,
    recorded_checksum,
    write_sidecars,
)
from rtprep.stages.merge import merge_export
from rtprep.stages.split import split_lib
from tests.test_streaming_equivalence import _make_export  # the messy two-lib export


def _write(path: Path, text: str, *, hashed: bool) -> None:
    with atomic_output(path) as tmp:
        if hashed:
            with hashed_file(tmp) as fh:
                fh.write(text.encode())
        else:
            tmp.write_text(text)
        write_sidecars(path, RowAccount("t", rows_in=1, rows_out=1))


@pytest.mark.parametrize("hashed", [True, False])
def test_sidecar_records_the_outputs_size_and_checksum(tmp_path: Path, hashed: bool) -> None:
    out = tmp_path / "o.txt"
    _write(out, "abc\n" * 1000, hashed=hashed)
    meta = read_meta(out)
    assert meta["bytes"] == out.stat().st_size == 4000
    assert meta["checksum"] == file_checksum(out)
    assert recorded_checksum(out) == file_checksum(out)


def test_input_checksum_from_its_sidecar_without_reading_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "in.txt"
    _write(src, "x" * 5000, hashed=True)
    real = file_checksum(src)

    def no_reading(path: object, chunk: int = 0) -> str:
        raise AssertionError(f"{path} was read to be hashed")

    monkeypatch.setattr(artifacts, "file_checksum", no_reading)
    assert describe_inputs([src]) == [{"path": str(src), "bytes": 5000, "checksum": real}]


def test_input_modified_after_its_sidecar_is_hashed_again(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    _write(src, "x" * 5000, hashed=True)
    before = read_meta(src)["checksum"]
    src.write_text("y" * 5000)  # same size, other bytes, written after the sidecar
    later = artifacts.meta_path(src).stat().st_mtime_ns + 1_000_000
    os.utime(src, ns=(later, later))
    assert recorded_checksum(src) is None
    got = describe_inputs([src])[0]["checksum"]
    assert got == file_checksum(src) != before


def test_input_of_other_size_than_recorded_is_hashed_again(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    _write(src, "x" * 5000, hashed=True)
    stat = artifacts.meta_path(src).stat()
    src.write_text("x" * 10)
    os.utime(src, ns=(stat.st_mtime_ns, stat.st_mtime_ns))  # not later than the sidecar
    assert recorded_checksum(src) is None
    assert describe_inputs([src])[0]["checksum"] == file_checksum(src)


def test_merge_hashes_shards_while_reading_and_split_reuses_the_merged_checksum(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    export = _make_export(tmp_path / "export")
    merged = tmp_path / "merged.parquet"
    reads: list[str] = []
    real_checksum = artifacts.file_checksum

    def counting(path: str | Path, chunk: int = 1 << 22) -> str:
        reads.append(Path(path).name)
        return real_checksum(path, chunk)

    monkeypatch.setattr(artifacts, "file_checksum", counting)
    merge_export(export, merged)
    assert not [r for r in reads if r.endswith(".parquet")], reads  # all hashed while read
    meta = read_meta(merged)
    for entry in meta["inputs"]:
        assert entry["checksum"] == real_checksum(entry["path"]), entry["path"]
    assert meta["checksum"] == real_checksum(merged)

    reads.clear()
    lib_file = tmp_path / "lib.parquet"
    split_lib(merged, int(pl.read_parquet(merged)["lib_id"][0]), lib_file)
    assert reads == []  # the merged file's checksum came from its sidecar
    assert read_meta(lib_file)["inputs"] == [
        {"path": str(merged), "bytes": merged.stat().st_size, "checksum": real_checksum(merged)}]
    assert read_meta(lib_file)["checksum"] == real_checksum(lib_file)
