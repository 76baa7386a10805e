"""Stage merge: merge a Pachyderm export's peak and predictor shards into one Parquet.

Input (``docs/internals.md``):
``<export>/create_training_data/lib_id=<L>/group=<g>/*.parquet`` (one row per peak) and
``<export>/combine_predictors/lib_id=<L>/species_matrix_type=<smt>/*.parquet`` (one row per
injection). Hive keys are columns taken from the folder names.

The peaks are processed one hive partition (``lib_id``, ``group``) at a time: a re-processed datum
repeats rows of its own partition, so exact duplicates are found inside a partition. Inside a
partition the shards are read once each, in order: a row whose 64-bit hash no earlier row of the
partition had passes straight through; the few others are resolved exactly, by full-row comparison
against the earlier rows with their hash (re-read from the shards that hold them). Memory is one
shard plus 12 bytes per row of the partition (the sorted hashes and their shards), not the
partition's rows (measured: benchmarks/README.md). Each lib's predictors (one row per injection)
are read when its first partition starts. Rows are appended in ``lib_id`` order with a ``pyarrow``
``ParquetWriter`` (on a background thread, overlapping the reading), buffered per lib so that no
row group spans two libs: split reads only its lib's row groups.

Drop reasons, in the order applied: ``duplicate_row``, ``cpd_status_not_kept``,
``sample_type_excluded``, ``no_predictor_row``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from rtprep.core.artifacts import (
    ROW_GROUP_SIZE,
    RowAccount,
    atomic_output,
    bytes_checksum,
    hashed_file,
    write_sidecars,
)
from rtprep.core.errors import RtprepError, input_error
from rtprep.core.frames import covariate_columns, natural_key
from rtprep.core.settings import default

log = logging.getLogger(__name__)

#: Drop reasons of the merge, in the order they are applied.
DROP_REASONS: tuple[str, ...] = (
    "duplicate_row",
    "cpd_status_not_kept",
    "sample_type_excluded",
    "no_predictor_row",
)

#: Peak columns first in the merged file, in this order (docs/internals.md).
CORE_PEAK_COLUMNS: tuple[str, ...] = (
    "lib_id",
    "sample_set_id",
    "task_id",
    "worksheet_id",
    "sample_type",
    "cpd_status",
    "comp_id",
    "species_matrix_type",
    "apex_rt",
)

#: Columns every peak shard must hold (after ``renames``).
REQUIRED_PEAK_COLUMNS: tuple[str, ...] = (
    "sample_set_id",
    "task_id",
    "comp_id",
    "species_matrix_type",
    "apex_rt",
    "cpd_status",
    "sample_type",
    "worksheet_id",
)

#: Integer ids: Int64 (a float shard is accepted when every value is a whole number).
ID_COLUMNS: frozenset[str] = frozenset({"lib_id", "sample_set_id", "task_id", "comp_id",
                                        "worksheet_id"})
#: Retention times: Float64.
RT_COLUMNS: frozenset[str] = frozenset({"apex_rt"})
#: Text columns: String.
TEXT_COLUMNS: frozenset[str] = frozenset({"species_matrix_type", "sample_type", "cpd_status"})

_SHARD_COLUMN = "__rtprep_shard"

#: Row groups handed to the writer thread and not yet written, at most.
WRITES_IN_FLIGHT = 2


@dataclass(frozen=True)
class MergeOptions:
    """The config's ``merge:`` mapping (defaults from the schema)."""

    key: tuple[str, ...] = tuple(default("merge", "key"))
    cpd_status_keep: tuple[str, ...] = tuple(default("merge", "cpd_status_keep"))
    sample_type_exclude: tuple[str, ...] = tuple(default("merge", "sample_type_exclude"))
    renames: Mapping[str, str] = field(default_factory=lambda: default("merge", "renames"))
    drop_columns: tuple[str, ...] = tuple(default("merge", "drop_columns"))
    peaks_glob: str = default("merge", "peaks_glob")
    predictors_glob: str = default("merge", "predictors_glob")

    @classmethod
    def from_config(cls, merge: Mapping[str, Any] | None) -> MergeOptions:
        """Build options from the config's ``merge:`` mapping (lists instead of tuples); keys
        left out keep their defaults."""
        merge = dict(merge or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(merge) - names)
        if unknown:
            log.warning("config merge: ignoring unknown key(s) %s", ", ".join(unknown))
        kwargs: dict[str, Any] = {}
        for name in names & set(merge):
            value = merge[name]
            if value is None:  # an empty YAML entry: nothing to rename / keep / drop
                value = {} if name == "renames" else []
            if name == "renames":
                if not isinstance(value, Mapping):
                    raise RtprepError(f"config merge.renames: expected a mapping, got {value!r}")
                kwargs[name] = {str(k): str(v) for k, v in value.items()}
            elif name in ("peaks_glob", "predictors_glob"):
                if not isinstance(value, str) or not value:
                    raise RtprepError(f"config merge.{name}: expected a glob, got {value!r}")
                kwargs[name] = value
            else:
                if isinstance(value, str):
                    value = [value]
                if not isinstance(value, Sequence):
                    raise RtprepError(f"config merge.{name}: expected a list, got {value!r}")
                kwargs[name] = tuple(str(v) for v in value)
        opts = cls(**kwargs)
        if not opts.key:
            raise RtprepError("config merge.key: the join key must name at least one column")
        return opts

    def as_config(self) -> dict[str, Any]:
        """Plain values for the sidecar."""
        return {
            "key": list(self.key),
            "cpd_status_keep": list(self.cpd_status_keep),
            "sample_type_exclude": list(self.sample_type_exclude),
            "renames": dict(self.renames),
            "drop_columns": list(self.drop_columns),
            "peaks_glob": self.peaks_glob,
            "predictors_glob": self.predictors_glob,
        }


# --------------------------------------------------------------------------------------------
# shard discovery and schema checks


@dataclass(frozen=True)
class _Shard:
    path: Path
    hive: tuple[tuple[str, str], ...]  # (key, value) from the folder names, outermost first
    schema: dict[str, pl.DataType]  # file columns after renames, hive keys removed

    @property
    def partition(self) -> Path:
        return self.path.parent

    @property
    def lib_id(self) -> int:
        return int(dict(self.hive)["lib_id"])


def _hive_of(path: Path, root: Path) -> tuple[tuple[str, str], ...]:
    parts = path.relative_to(root).parts[:-1]
    return tuple(
        (k, unquote(v)) for k, _, v in (p.partition("=") for p in parts if "=" in p)
    )


def _find_shards(export_dir: Path, sub: str, pattern: str,
                 renames: Mapping[str, str]) -> list[_Shard]:
    root = export_dir / sub
    if not root.is_dir():
        raise input_error(
            export_dir,
            f"folder '{sub}/' is missing; a Pachyderm export holds create_training_data/ and "
            "combine_predictors/: copy the complete export (both folders)",
        )
    # Hidden and underscore files are writers' leftovers (temp files, _SUCCESS), as in pyarrow.
    paths = sorted(
        p for p in export_dir.glob(pattern)
        if p.is_file() and not p.name.startswith((".", "_"))
    )
    paths = [p for p in paths if root in p.parents]
    if not paths:
        raise input_error(root, f"no Parquet shards match '{pattern}'; copy the complete export "
                                "(or fix merge.peaks_glob / merge.predictors_glob in the config)")
    shards = []
    for p in paths:
        hive = _hive_of(p, root)
        keys = [k for k, _ in hive]
        if "lib_id" not in keys:
            raise input_error(p, "shard is not under a 'lib_id=<L>' folder")
        lib = dict(hive)["lib_id"]
        try:
            int(lib)
        except ValueError:
            raise input_error(p, f"folder lib_id={lib!r} is not an integer lib id",
                              column="lib_id") from None
        try:
            raw = pl.read_parquet_schema(p)
        except Exception as exc:  # any reader error means: not a readable Parquet file
            raise input_error(p, f"shard is not a readable Parquet file (truncated or not "
                                 f"Parquet): {exc}; re-export it (or remove it if it does not "
                                 "belong to the export)") from exc
        schema: dict[str, pl.DataType] = {}
        for name, dtype in raw.items():
            new = renames.get(name, name)
            if new in schema:
                raise input_error(p, f"columns '{name}' and '{new}' both become '{new}' after "
                                     "merge.renames; keep only one", column=new)
            if new in keys:  # the folder's value wins over a repeated hive column
                continue
            schema[new] = dtype
        shards.append(_Shard(p, hive, schema))
    return shards


def _kind(dtype: pl.DataType) -> str:
    if dtype == pl.Null:
        return "null"
    if dtype.is_integer():
        return "int"
    if dtype.is_float() or isinstance(dtype, pl.Decimal):
        return "float"
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Categorical | pl.Enum):
        return "string"
    if dtype == pl.Boolean:
        return "bool"
    return "other"


def _unify(shards: list[_Shard], *, float_columns: frozenset[str] = frozenset()
           ) -> dict[str, pl.DataType]:
    """One schema for all shards: ints → Int64, floats → Float64, strings → String; ids are
    Int64, RTs and ``float_columns`` Float64. Columns in order of first appearance."""
    seen: dict[str, list[tuple[pl.DataType, Path]]] = {}
    for s in shards:
        for name, dtype in s.schema.items():
            seen.setdefault(name, []).append((dtype, s.path))
    out: dict[str, pl.DataType] = {}
    for name, found in seen.items():
        kinds = {_kind(d) for d, _ in found} - {"null"}
        numeric_needed = name in ID_COLUMNS or name in RT_COLUMNS or name in float_columns
        if numeric_needed:
            bad = [(d, p) for d, p in found if _kind(d) not in ("int", "float", "null")]
            if bad:
                d, p = bad[0]
                raise input_error(p, f"has type {d}, a number is needed; re-export the shard "
                                     "with numeric values", column=name)
            out[name] = pl.Int64 if name in ID_COLUMNS else pl.Float64
        elif name in TEXT_COLUMNS:
            bad = [(d, p) for d, p in found if _kind(d) in ("other",)]
            if bad:
                d, p = bad[0]
                raise input_error(p, f"has type {d}, text is needed; re-export the shard with "
                                     "text values", column=name)
            out[name] = pl.String
        elif not kinds:
            out[name] = pl.Null
        elif kinds <= {"int"}:
            out[name] = pl.Int64
        elif kinds <= {"int", "float"}:
            out[name] = pl.Float64
        elif kinds == {"string"}:
            out[name] = pl.String
        elif kinds == {"bool"}:
            out[name] = pl.Boolean
        else:
            types = {str(d) for d, _ in found if _kind(d) != "null"}
            if len(types) > 1:
                desc = "; ".join(f"{p} has {d}" for d, p in found[:4])
                raise input_error(found[0][1], f"shards disagree on the column's type ({desc})",
                                  column=name)
            out[name] = next(d for d, _ in found if _kind(d) != "null")
    return out


def _check_required(shards: list[_Shard], required: Sequence[str], what: str) -> None:
    for s in shards:
        have = set(s.schema) | {k for k, _ in s.hive}
        missing = [c for c in required if c not in have]
        if missing:
            raise input_error(
                s.path,
                f"{what} shard is missing required column(s) "
                f"{', '.join(repr(m) for m in missing)}; it has: {', '.join(s.schema)}. If the "
                "export names a column differently, map it with merge.renames in the config "
                "(e.g. correct: comp_id)",
                column=missing[0],
            )


# --------------------------------------------------------------------------------------------
# reading


def _read_shard(shard: _Shard, schema: Mapping[str, pl.DataType],
                renames: Mapping[str, str], checksums: dict[str, str] | None = None
                ) -> pl.DataFrame:
    """One shard in the unified ``schema`` (missing columns as nulls, hive keys from the path).

    With ``checksums``, a shard not yet in it is read as bytes, hashed for the sidecar
    (``str(path) -> checksum``) and parsed from memory: hashed while it is streamed."""
    try:
        if checksums is not None and str(shard.path) not in checksums:
            data = shard.path.read_bytes()
            checksums[str(shard.path)] = bytes_checksum(data)
            df = pl.read_parquet(io.BytesIO(data), hive_partitioning=False)
            del data
        else:
            df = pl.read_parquet(shard.path, hive_partitioning=False)
    except Exception as exc:
        raise input_error(shard.path, f"shard cannot be read (truncated or corrupt?): {exc}; "
                                      "re-export it") from exc
    hive = dict(shard.hive)
    df = df.rename({k: v for k, v in renames.items() if k in df.columns})
    df = df.drop([c for c in df.columns if c in hive])
    exprs: list[pl.Expr] = []
    for name, dtype in schema.items():
        if name in hive:
            value: Any = int(hive[name]) if name == "lib_id" else hive[name]
            exprs.append(pl.lit(value, dtype=dtype).alias(name))
        elif name not in df.columns:
            exprs.append(pl.lit(None, dtype=dtype).alias(name))
        else:
            src = df.schema[name]
            if dtype == pl.Int64 and _kind(src) == "float":
                # float ids (pandas writes ints with nulls as floats): only whole numbers pass
                col = pl.col(name)
                bad = df.filter(col.is_not_null() & (~col.is_finite() | (col != col.floor())))
                if bad.height:
                    raise input_error(shard.path, f"id value {bad[name][0]!r} is not a whole "
                                                  "number; ids must be integers: fix the shard",
                                      column=name)
            exprs.append(pl.col(name).cast(dtype, strict=True).alias(name))
    try:
        return df.select(exprs)
    except pl.exceptions.PolarsError as exc:
        raise input_error(shard.path, f"cannot convert columns to the merged schema: {exc}"
                          ) from exc


def _read_predictors(shards: list[_Shard], schema: dict[str, pl.DataType], key: Sequence[str],
                     renames: Mapping[str, str], export_dir: Path,
                     checksums: dict[str, str] | None = None
                     ) -> tuple[pl.DataFrame, int, int]:
    """The predictor rows of ``shards``, exact duplicates removed; raises on two different rows
    for one key. Returns (predictors, rows read, duplicate rows). The merge calls it one lib at
    a time when the key holds ``lib_id`` (memory: one lib's predictors)."""
    frames = [
        _read_shard(s, schema, renames, checksums)
        .with_columns(pl.lit(i, dtype=pl.UInt32).alias(_SHARD_COLUMN))
        for i, s in enumerate(shards)
    ]
    if not frames:
        return pl.DataFrame(schema=schema), 0, 0
    preds = pl.concat(frames, how="vertical")
    del frames
    n_read = preds.height
    preds = preds.unique(subset=list(schema), keep="first", maintain_order=True)
    n_dup = n_read - preds.height
    counts = preds.group_by(list(key)).agg(pl.len().alias("n"), pl.col(_SHARD_COLUMN).unique())
    conflicts = counts.filter(pl.col("n") > 1).sort(list(key), nulls_last=True)
    if conflicts.height:
        first = conflicts.row(0, named=True)
        where = ", ".join(f"{k}={first[k]!r}" for k in key)
        files = ", ".join(sorted(str(shards[i].path) for i in first[_SHARD_COLUMN]))
        raise RtprepError(
            f"{export_dir}: {conflicts.height} key(s) have two or more different predictor rows "
            f"in combine_predictors/ (key {', '.join(key)}); first: {where} with "
            f"{first['n']} different rows, in {files}. Fix or remove the conflicting shard."
        )
    return preds.drop(_SHARD_COLUMN), n_read, n_dup


@dataclass
class _Predictors:
    """The predictor rows, read one lib at a time when the key holds ``lib_id`` (each lib's
    shards sit under ``combine_predictors/lib_id=<L>/``), else all at once. Counts the rows read
    and the exact duplicates."""

    plan: _Plan
    key: list[str]
    renames: Mapping[str, str]
    export_dir: Path
    checksums: dict[str, str]
    rows_read: int = 0
    duplicates: int = 0
    _done: set[int] = field(default_factory=set)  # libs read (per lib)
    _all: pl.DataFrame | None = None

    @property
    def per_lib(self) -> bool:
        return "lib_id" in self.key

    def _read(self, shards: list[_Shard]) -> pl.DataFrame:
        preds, n_read, n_dup = _read_predictors(shards, self.plan.pred_schema, self.key,
                                                self.renames, self.export_dir, self.checksums)
        self.rows_read += n_read
        self.duplicates += n_dup
        return preds.select([*self.key, *self.plan.pred_out])

    def _whole(self) -> pl.DataFrame:
        if self._all is None:
            self._all = self._read(self.plan.pred_shards)
        return self._all

    def of_lib(self, lib: int) -> pl.DataFrame:
        """The predictor rows to join to ``lib``'s peaks."""
        if not self.per_lib:
            return self._whole()
        self._done.add(lib)
        return self._read([s for s in self.plan.pred_shards if s.lib_id == lib])

    def finish(self) -> None:
        """Read (check and hash) the shards of the libs no peak needed."""
        if not self.per_lib:
            self._whole()
        for lib in sorted({s.lib_id for s in self.plan.pred_shards} - self._done):
            self.of_lib(lib)


# --------------------------------------------------------------------------------------------
# writing


class _LibBufferedWriter:
    """Append frames to a Parquet file in full row groups; a lib's rows never share a row group
    with another lib's (``flush`` at each lib change)."""

    def __init__(self, path: Path | io.RawIOBase, schema: Mapping[str, pl.DataType]) -> None:
        self._schema = pl.DataFrame(schema=dict(schema)).to_arrow().schema
        # Floats (the RTs and the predictors) are written plain, without a dictionary or
        # statistics: a dictionary of RTs is useless (pyarrow builds it, then falls back), and
        # zstd packs a predictor's value repeated over an injection's peaks better than its
        # dictionary indices. Measured on 15 M merged rows of the wide shape: writing 10.1 ->
        # 5.9 s, the file 260 -> 171 MB, reading one lib's rows 2.4 -> 0.7 s
        # (benchmarks/README.md). Ids and text keep their dictionaries and statistics (split
        # prunes row groups by lib_id's).
        coded = [n for n, t in schema.items() if not t.is_float()]
        self._writer = pq.ParquetWriter(path, self._schema, compression="zstd",
                                        use_dictionary=coded, write_statistics=coded)
        self._buf: list[pl.DataFrame] = []
        self._n = 0
        # pyarrow encodes and compresses without the GIL: one background thread writes while
        # the caller reads the next shard. WRITES_IN_FLIGHT writes queued at most (bounded
        # memory); a single worker keeps the writes in order, so the bytes are those of a
        # serial writer.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge-writer")
        self._pending: collections.deque[Future[None]] = collections.deque()

    def _wait(self, keep: int = 0) -> None:
        """Wait until at most ``keep`` writes are queued."""
        while len(self._pending) > keep:
            self._pending.popleft().result()  # re-raises a write error in the caller's thread

    def _write_now(self, df: pl.DataFrame) -> None:
        table = df.to_arrow()
        if table.schema != self._schema:
            table = table.cast(self._schema)
        self._writer.write_table(table, row_group_size=ROW_GROUP_SIZE)

    def _write(self, df: pl.DataFrame) -> None:
        self._wait(WRITES_IN_FLIGHT - 1)
        self._pending.append(self._pool.submit(self._write_now, df))

    def append(self, df: pl.DataFrame) -> None:
        # Frames are concatenated without a copy (rechunk=False): pyarrow writes a row group
        # from several chunks in the bytes it writes from one (cmp on the benchmark's exports).
        if df.height == 0:
            return
        self._buf.append(df)
        self._n += df.height
        if self._n >= ROW_GROUP_SIZE:
            whole = pl.concat(self._buf, how="vertical", rechunk=False)
            n_full = (self._n // ROW_GROUP_SIZE) * ROW_GROUP_SIZE
            self._write(whole.slice(0, n_full))
            rest = whole.slice(n_full)
            self._buf, self._n = ([rest], rest.height) if rest.height else ([], 0)

    def flush(self) -> None:
        if self._buf:
            self._write(pl.concat(self._buf, how="vertical", rechunk=False))
        self._buf, self._n = [], 0

    def close(self) -> None:
        self.flush()
        self._wait()
        self._pool.shutdown()
        self._writer.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # the original error is being raised already
            self._wait()
        self._pool.shutdown()
        self._writer.close()


_T = TypeVar("_T")
_R = TypeVar("_R")


def _prefetched(items: Sequence[_T], fn: Callable[[_T], _R]) -> Iterator[_R]:
    """``fn(item)`` for each item, in order, the next one computed on a background thread while
    the caller works on the current one (polars and pyarrow release the GIL while they read and
    decode): one result ahead at most."""
    if not items:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge-reader") as pool:
        ahead = pool.submit(fn, items[0])
        for nxt in items[1:]:
            current = ahead.result()
            ahead = pool.submit(fn, nxt)
            yield current
            del current
        yield ahead.result()


class _SeenHashes:
    """The 64-bit row hashes of a partition's shards read so far, each with its shard's index:
    a few sorted runs, merged as in a binary counter (a run is merged into the one before it
    while it is at least as long), so about log2(shards) runs are searched and each hash is
    moved log2(shards) times at most. 12 bytes a row of the partition."""

    def __init__(self) -> None:
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, hashes: np.ndarray, shard: int) -> None:
        """Add a shard's hashes, sorted."""
        if hashes.size == 0:
            return
        run = (hashes, np.full(hashes.size, shard, dtype=np.uint32))
        self._runs.append(run)
        while len(self._runs) > 1 and self._runs[-2][0].size <= self._runs[-1][0].size:
            (h1, s1), (h2, s2) = self._runs[-2], self._runs.pop()
            both = np.concatenate([h1, h2])
            order = np.argsort(both, kind="stable")  # timsort: a merge of the two sorted runs
            self._runs[-1] = (both[order], np.concatenate([s1, s2])[order])

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        """Whether each of the sorted ``hashes`` was seen (bool per hash). Sorted queries keep
        numpy's binary searches in cache (each starts where the last ended): 10x faster than
        unsorted ones at a million seen hashes."""
        found = np.zeros(hashes.size, dtype=bool)
        for h, _ in self._runs:
            at = np.minimum(np.searchsorted(h, hashes), h.size - 1)
            found |= h[at] == hashes
        return found

    def shards_of(self, hashes: np.ndarray) -> list[int]:
        """The shards holding any of ``hashes``, in order."""
        shards: set[int] = set()
        for h, s in self._runs:
            lo = np.searchsorted(h, hashes, side="left")
            hi = np.searchsorted(h, hashes, side="right")
            n = hi - lo
            if n.any():
                start = np.repeat(lo, n)
                offset = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
                shards.update(np.flatnonzero(np.bincount(s[start + offset])).tolist())
        return sorted(shards)


def _unique_rows(members: list[_Shard], schema: Mapping[str, pl.DataType],
                 renames: Mapping[str, str], checksums: dict[str, str] | None = None
                 ) -> Iterator[tuple[pl.DataFrame, int, int]]:
    """The rows of one partition's shards (in order) without exact duplicates, shard by shard:
    yields ``(rows, rows read, duplicate rows dropped)`` per shard.

    The same rows, in the same order, as ``pl.concat(shards).unique(keep="first",
    maintain_order=True)``, in one pass without holding the partition: each row's 64-bit hash
    (``hash_rows``: equal rows hash equally, -0.0/0.0 and NaNs included, as ``unique`` compares
    them) is looked up among the hashes of the partition's earlier rows (:class:`_SeenHashes`).
    Only a row whose hash was seen before, or repeats within its shard, is decided by full-row
    comparison: against the earlier rows with its hash, re-read from the shards that hold them
    (a re-processed datum repeats one earlier shard: one re-read), so a hash collision between
    different rows keeps both. ``hash_rows`` may change between polars versions; that only
    changes which rows are compared in full, never the result.
    """
    seen = _SeenHashes()
    previous: tuple[int, pl.DataFrame, pl.Series] | None = None  # a re-read saved, often
    for i, df in enumerate(_prefetched(
            members, lambda s: _read_shard(s, schema, renames, checksums))):
        n_read = df.height
        read = df
        hashes = df.hash_rows()
        h = hashes.to_numpy()
        order = np.argsort(h)
        h_sorted = h[order]
        before_sorted = seen.contains(h_sorted)
        before = np.empty(h.size, dtype=bool)
        before[order] = before_sorted
        cand = before | hashes.is_duplicated().to_numpy()
        if cand.any():
            rows = df.filter(cand)
            earlier_h = h_sorted[before_sorted]  # sorted: its distinct values are adjacent
            if earlier_h.size:
                earlier_h = earlier_h[np.r_[True, earlier_h[1:] != earlier_h[:-1]]]
            prior = []
            for j in seen.shards_of(earlier_h):
                if previous is not None and previous[0] == j:
                    old, old_h = previous[1], previous[2]
                else:
                    old = _read_shard(members[j], schema, renames)
                    old_h = old.hash_rows()
                prior.append(old.filter(np.isin(old_h.to_numpy(), earlier_h)))
                log.debug("merge: %s repeats rows of %s", members[i].path, members[j].path)
            both = pl.concat([*prior, rows], how="vertical") if prior else rows
            first = both.select(pl.struct(pl.all()).is_first_distinct()).to_series()
            keep = ~cand
            keep[np.flatnonzero(cand)] = first.slice(both.height - rows.height).to_numpy()
            df = df.filter(keep)
        seen.add(h_sorted, i)
        previous = (i, read, hashes)
        yield df, n_read, n_read - df.height


# --------------------------------------------------------------------------------------------
# the stage


def _partitions(shards: list[_Shard]) -> Iterator[tuple[Path, list[_Shard]]]:
    """Hive partitions (shard folders) in lib_id order, then natural order of the other keys."""
    by_part: dict[Path, list[_Shard]] = {}
    for s in shards:
        by_part.setdefault(s.partition, []).append(s)

    def order(item: tuple[Path, list[_Shard]]) -> tuple[Any, ...]:
        first = item[1][0]
        rest = tuple(natural_key(f"{k}={v}") for k, v in first.hive if k != "lib_id")
        return (first.lib_id, rest, natural_key(str(item[0])))

    for part, members in sorted(by_part.items(), key=order):
        yield part, sorted(members, key=lambda s: s.path.name)


def _check_export_dir(export_dir: Path) -> None:
    if not export_dir.is_dir():
        raise RtprepError(f"{export_dir}: export folder not found; check the path (rtprep "
                          "merge -i, or data_dir and exports in the config)")
    if not any(export_dir.iterdir()):
        raise RtprepError(f"{export_dir}: export folder is empty; a Pachyderm export holds "
                          "create_training_data/ and combine_predictors/: copy the complete "
                          "export")


@dataclass
class _Plan:
    """The export's shards, their unified schemas and the merged file's columns."""

    peak_shards: list[_Shard]
    pred_shards: list[_Shard]
    peak_schema: dict[str, pl.DataType]
    pred_schema: dict[str, pl.DataType]
    pred_out: list[str]  # predictor columns of the output, in order
    out_schema: dict[str, pl.DataType]


def _plan(export_dir: Path, opts: MergeOptions) -> _Plan:
    """Find and check the shards, unify their schemas, order the output's columns: core peak
    columns, other peak columns (natural order: independent of how the export was sharded),
    predictors by family, then other predictor columns."""
    renames, key, drop = dict(opts.renames), list(opts.key), set(opts.drop_columns)
    peak_shards = _find_shards(export_dir, "create_training_data", opts.peaks_glob, renames)
    pred_shards = _find_shards(export_dir, "combine_predictors", opts.predictors_glob, renames)
    _check_required(peak_shards, list(dict.fromkeys([*REQUIRED_PEAK_COLUMNS, *key])), "peak")
    _check_required(pred_shards, key, "predictor")

    peak_schema = _unify(peak_shards)
    pred_file_cols = {c for s in pred_shards for c in s.schema}
    # The standards' RTs are times: Float64 whatever the shard wrote.
    covs = frozenset(covariate_columns(pred_file_cols - set(key)))
    pred_schema = _unify(pred_shards, float_columns=covs)
    for shards, schema in ((peak_shards, peak_schema), (pred_shards, pred_schema)):
        for hk in dict.fromkeys(k for s in shards for k, _ in s.hive):
            if hk not in schema:
                schema[hk] = pl.Int64 if hk in ID_COLUMNS else pl.String
    # Join keys must agree on type: the peaks' type wins.
    for k in key:
        if pred_schema[k] != peak_schema[k]:
            pred_schema[k] = peak_schema[k]

    other_peak = sorted((c for c in peak_schema if c not in CORE_PEAK_COLUMNS), key=natural_key)
    peak_out = [c for c in (*CORE_PEAK_COLUMNS, *other_peak) if c in peak_schema and c not in drop]
    pred_extra = [c for c in pred_schema if c not in key and c not in drop]
    clashes = [c for c in pred_extra if c in peak_schema]
    if clashes:
        log.warning("merge: predictor column(s) %s also exist in the peaks; the peaks' are kept",
                    ", ".join(clashes))
    pred_extra = [c for c in pred_extra if c not in clashes]
    pred_out = covariate_columns(pred_extra)
    pred_out += sorted((c for c in pred_extra if c not in pred_out), key=natural_key)
    out_schema = {c: peak_schema[c] for c in peak_out} | {c: pred_schema[c] for c in pred_out}
    return _Plan(peak_shards, pred_shards, peak_schema, pred_schema, pred_out, out_schema)


def _merge_partition(members: list[_Shard], pred: pl.DataFrame, plan: _Plan,
                     opts: MergeOptions, missing_tasks: set[Any], writer: _LibBufferedWriter,
                     checksums: dict[str, str]) -> dict[str, int]:
    """Dedupe, filter and join one hive partition's shards, shard by shard, appending the rows
    to ``writer``; returns its counts (rows in, each drop reason, rows out) and adds the task ids
    without predictors to ``missing_tasks``. Every step is row-local (the dedupe is resolved by
    :func:`_unique_rows`), so the rows and their order are those of the whole partition."""
    key = list(opts.key)
    keep_status = pl.col("cpd_status").is_in(list(opts.cpd_status_keep)).fill_null(False)
    keep_type = ~pl.col("sample_type").is_in(list(opts.sample_type_exclude)).fill_null(False)
    out_columns = list(plan.out_schema)
    counts = dict.fromkeys(("rows_in", *DROP_REASONS, "rows_out"), 0)

    def add(df: pl.DataFrame) -> None:
        # One filter for both reasons (each filter copies the rows), counted in their order.
        status, stype = df.select(keep_status.alias("s"), keep_type.alias("t")).get_columns()
        n_status = status.sum()
        keep = status & stype
        counts["cpd_status_not_kept"] += df.height - n_status
        counts["sample_type_excluded"] += n_status - keep.sum()
        df = df.filter(keep)
        joined = df.join(pred, on=key, how="inner", maintain_order="left")
        counts["no_predictor_row"] += df.height - joined.height
        counts["rows_out"] += joined.height
        if df.height != joined.height:
            missing = df.join(pred, on=key, how="anti")
            missing_tasks.update(missing["task_id"].drop_nulls().unique().to_list())
        writer.append(joined.select(out_columns))

    for shard, n_read, n_dup in _unique_rows(members, plan.peak_schema, opts.renames,
                                             checksums):
        counts["rows_in"] += n_read
        counts["duplicate_row"] += n_dup
        # A row group's worth at a time: the writer thread starts on a big shard's first row
        # group while the rest is joined, and holds less (wide 4 M: 0.70 -> 0.51 GB).
        for start in range(0, shard.height, ROW_GROUP_SIZE):
            add(shard.slice(start, ROW_GROUP_SIZE))
    return counts


def _add_counts(account: RowAccount, per_lib: dict[int, dict[str, Any]], lib: int,
                counts: dict[str, int]) -> None:
    """Add one partition's counts to the account and to its lib's block (the shape of a sidecar:
    rows_in, drops, rows_out; the accounting table reads one block per lib)."""
    account.rows_in += counts["rows_in"]
    for reason in DROP_REASONS:
        account.drop(reason, counts[reason])
    account.rows_out += counts["rows_out"]
    acc = per_lib.setdefault(
        lib, {"rows_in": 0, "drops": dict.fromkeys(DROP_REASONS, 0), "rows_out": 0})
    acc["rows_in"] += counts["rows_in"]
    acc["rows_out"] += counts["rows_out"]
    for reason in DROP_REASONS:
        acc["drops"][reason] += counts[reason]


def merge_export(export_dir: str | Path, output: str | Path,
                 options: MergeOptions | None = None) -> RowAccount:
    """Merge a Pachyderm export into ``output`` (``merged_training_<hash>.parquet``).

    Renames columns (``options.renames``), normalises the shards' schemas, drops exact duplicate
    rows within each hive partition, keeps ``cpd_status`` in ``options.cpd_status_keep`` and drops
    ``sample_type`` in ``options.sample_type_exclude``, then inner-joins the peaks with the
    predictors on ``options.key``. Rows are written in ``lib_id`` order, peak columns first
    (docs/internals.md), then the predictors (IS, RS, ES_ in natural order, then others); no row
    group spans two libs. Writes ``output`` atomically with its ``.meta.json`` sidecar and returns
    the row account (per-lib ``{rows_in, drops: {reason: n}, rows_out}`` in
    ``extra["per_lib"][lib]``, the libs in ``extra["libs"]``). Every shard is hashed for the
    sidecar while it is read, the output while it is written.

    Raises :class:`RtprepError` for a missing or empty export, a missing subfolder, no shards,
    an unreadable shard, a missing or mistyped required column, or two different predictor rows
    for one key.
    """
    t0 = time.perf_counter()
    opts = options or MergeOptions()
    export_dir, output = Path(export_dir), Path(output)
    _check_export_dir(export_dir)
    log.info("merge: export %s -> %s", export_dir, output)
    plan = _plan(export_dir, opts)
    key = list(opts.key)
    checksums: dict[str, str] = {}
    preds = _Predictors(plan, key, dict(opts.renames), export_dir, checksums)
    log.info("merge: %d peak shards, %d predictor shards, %d predictor columns",
             len(plan.peak_shards), len(plan.pred_shards), len(plan.pred_out))

    account = RowAccount("merge", drops=dict.fromkeys(DROP_REASONS, 0))
    missing_tasks: set[Any] = set()  # task ids dropped for no_predictor_row
    per_lib: dict[int, dict[str, Any]] = {}
    parts = list(_partitions(plan.peak_shards))
    with atomic_output(output) as tmp:
        with hashed_file(tmp) as fh:
            writer = _LibBufferedWriter(fh, plan.out_schema)
            try:
                current_lib: int | None = None
                pred = pl.DataFrame()
                for i, (part, members) in enumerate(parts, start=1):
                    lib = members[0].lib_id
                    if lib != current_lib:
                        writer.flush()
                        current_lib = lib
                        del pred  # one lib's predictors held at a time
                        pred = preds.of_lib(lib)
                        log.info("merge: lib %d: %d predictor rows", lib, pred.height)
                    counts = _merge_partition(members, pred, plan, opts, missing_tasks, writer,
                                              checksums)
                    _add_counts(account, per_lib, lib, counts)
                    log.info("merge: partition %d/%d %s: %s", i, len(parts),
                             part.relative_to(export_dir),
                             ", ".join(f"{k2} {v:,}" for k2, v in counts.items()))
                preds.finish()
                writer.close()
            except BaseException:
                writer.abort()
                raise
        if missing_tasks:
            account.drop("no_predictor_row", 0, column="task_id", ids=missing_tasks)
        account.extra = {
            "export": export_dir.name,
            "libs": sorted(per_lib),
            "per_lib": {lib: per_lib[lib] for lib in sorted(per_lib)},
            "peak_shards": len(plan.peak_shards),
            "partitions": len(parts),
            "predictor_shards": len(plan.pred_shards),
            "predictor_rows_in": preds.rows_read,
            "predictor_duplicate_rows": preds.duplicates,
            "predictor_columns": plan.pred_out,
        }
        write_sidecars(output, account, inputs=[export_dir], config=opts.as_config(),
                       balanced=True, known=checksums)
    log.info("merge: %s (%.1f s)", account.funnel(), time.perf_counter() - t0)
    return account


__all__ = ["DROP_REASONS", "MergeOptions", "merge_export"]
