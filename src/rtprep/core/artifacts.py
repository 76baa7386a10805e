"""Shared mechanics of every stage: atomic outputs, row accounting, ``.meta.json`` sidecars and
dropped-id side files.

Every output is written under a temporary name in its own folder and renamed when complete, so no
file that a user (or Snakemake) could take for finished is ever half-written. Beside each output:

- ``<output>.meta.json``: stage, rows in, each drop reason with its count, rows out, input
  checksums, the config values and seeds used, package versions, and the output's own size and
  checksum (``bytes``, ``checksum``);
- ``<output>.dropped.csv`` (when anything was dropped by id): ``reason, column, id`` so a user can
  see *which* comp_ids were unmapped, which sample sets had no species, ...

Checksums (blake2b-128 over every byte) without re-reading files only to hash them: an output is
hashed while it is written (:func:`hashed_file`, a file object every writer here accepts) or,
when its writer takes only a path, right after, from the page cache; its sidecar records it. An
input that has a sidecar recording its size and checksum, and was not modified after that
sidecar was written, takes the checksum from there (:func:`describe_inputs`); a file without a
sidecar (an export's shard, a mapping CSV) is hashed, by a stage that streams it while it reads
it (``known=``), else on its own.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import glob
import hashlib
import io
import json
import os
import platform
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import rtprep
from rtprep.core.errors import RtprepError

#: Parquet row-group size of every stage from cap onward (fixed: byte-identical outputs).
ROW_GROUP_SIZE = 65_536

META_SUFFIX = ".meta.json"
DROPPED_SUFFIX = ".dropped.csv"

#: The part of a temporary's name between ``.<name>.`` and ``.tmp``: the pid, then maybe a tag.
_TMP_MIDDLE = re.compile(r"(\d+)(?:\.[A-Za-z0-9_-]+)?")

_VERSIONED = ("polars", "pyarrow", "numpy", "scikit-learn", "pymc", "rdkit", "snakemake")


def tmp_path_for(path: str | Path, tag: str | None = None) -> Path:
    """The temporary name an output is written under: same folder (so the rename is atomic),
    hidden, and with the pid so that two writers never collide.

    With ``tag`` (letters, digits, ``-``, ``_``): the name of a scratch file of the writer of
    ``path``, ``.<name>.<pid>.<tag>.tmp`` (see :func:`scratch_files`).
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}{f'.{tag}' if tag else ''}.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Remove temporaries (and scratch files) of ``path`` left by a writer that was killed (its
    pid is gone)."""
    for old in path.parent.glob(f"{glob.escape('.' + path.name)}.*.tmp"):
        # ".<name>.<pid>.tmp" or ".<name>.<pid>.<tag>.tmp"; not ".<name>.meta.json.<pid>.tmp"
        m = _TMP_MIDDLE.fullmatch(old.name[len(path.name) + 2 : -len(".tmp")])
        if m and int(m[1]) != os.getpid() and not _pid_alive(int(m[1])):
            with contextlib.suppress(FileNotFoundError):
                old.unlink()


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path`` to; rename it into place only if the block succeeds.

    On any exception the temporary file is removed and ``path`` is left as it was (absent, or the
    previous complete version).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(path)
    except OSError as exc:
        err = _write_error(path, exc)
        if err is None:
            raise
        raise err from exc
    tmp = tmp_path_for(path)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"internal error: nothing was written to {tmp} for {path}")
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        err = _write_error(path, exc)
        if err is not None:
            raise err from exc
        raise


#: What the operating system says when a file cannot be written, as errno and as the text that
#: libraries (pyarrow, polars' Rust I/O) put in their own exceptions.
_WRITE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                 errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                 errno.EROFS: "read-only file system"}
_WRITE_TEXTS = {"no space left on device": errno.ENOSPC, "os error 28": errno.ENOSPC,
                "disk quota exceeded": errno.EDQUOT, "permission denied": errno.EACCES,
                "read-only file system": errno.EROFS, "os error 30": errno.EROFS}


def _write_error(path: Path, exc: BaseException) -> RtprepError | None:
    """One line naming the file being written and the cause, for an error of the operating
    system (full disk, no permission, read-only file system); None for any other error."""
    code = getattr(exc, "errno", None)
    if code not in _WRITE_ERRNOS:
        text = str(exc).lower()
        code = next((c for t, c in _WRITE_TEXTS.items() if t in text), None)
    if code is None:
        return None
    return RtprepError(f"{path}: cannot write it: {_WRITE_ERRNOS[code]} (in {path.parent}); "
                       "nothing was left half-written")


@contextlib.contextmanager
def scratch_files(path: str | Path) -> Iterator[Callable[[str], Path]]:
    """Scratch files of the writer of ``path``, for intermediate data too big for memory.

    Yields ``name(tag) -> Path``: ``.<name>.<pid>.<tag>.tmp`` in ``path``'s folder (hidden, like
    the :func:`atomic_output` temporary, and on the same disk as the output). Every scratch file
    of this process for ``path`` is removed when the block exits, on success or failure; those of
    a killed writer are stale temporaries, removed by the next :func:`atomic_output` of ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield lambda tag: tmp_path_for(path, tag)
    finally:
        for f in path.parent.glob(f"{glob.escape(f'.{path.name}.{os.getpid()}.')}*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a small text file atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def file_checksum(path: str | Path, chunk: int = 1 << 22) -> str:
    """``blake2b-128`` of a file's bytes, as ``"blake2b:<hex>"``."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return "blake2b:" + h.hexdigest()


def bytes_checksum(data: bytes | memoryview) -> str:
    """:func:`file_checksum` of a file holding ``data``."""
    return "blake2b:" + hashlib.blake2b(data, digest_size=16).hexdigest()


class HashingWriter(io.RawIOBase):
    """A write-only binary file that hashes (blake2b-128) every byte on its way to ``raw``."""

    def __init__(self, raw: io.BufferedWriter) -> None:
        super().__init__()
        self._raw = raw
        self._hash = hashlib.blake2b(digest_size=16)
        self.bytes_written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # bytes-like
        view = memoryview(data).cast("B")
        self._hash.update(view)
        self._raw.write(view)
        self.bytes_written += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self.bytes_written

    def flush(self) -> None:
        self._raw.flush()

    @property
    def checksum(self) -> str:
        return "blake2b:" + self._hash.hexdigest()


#: Checksums of files this process wrote through :func:`hashed_file`: path -> (bytes, checksum).
_WRITTEN: dict[str, tuple[int, str]] = {}


@contextlib.contextmanager
def hashed_file(path: str | Path) -> Iterator[HashingWriter]:
    """Open ``path`` (usually an :func:`atomic_output` temporary) for writing through a
    :class:`HashingWriter`; on success its size and checksum are kept for the sidecar, which
    :func:`write_sidecars` then records without reading the file again."""
    with open(path, "wb") as raw:
        writer = HashingWriter(raw)
        yield writer
        if not writer.closed:
            writer.flush()
    _WRITTEN[str(path)] = (writer.bytes_written, writer.checksum)


def _own_record(output: Path) -> dict[str, Any]:
    """``bytes`` and ``checksum`` of the output being finished: the temporary of this process
    (inside :func:`atomic_output`) or the output itself."""
    tmp = tmp_path_for(output)
    written = tmp if tmp.is_file() else output
    if not written.is_file():
        return {}
    size = written.stat().st_size
    known = _WRITTEN.pop(str(written), None)
    checksum = known[1] if known and known[0] == size else file_checksum(written)
    return {"bytes": size, "checksum": checksum}


def recorded_checksum(path: str | Path) -> str | None:
    """The checksum that ``path``'s sidecar records for it, when the sidecar holds one for a file
    of this size and ``path`` was not modified after the sidecar was written; else None."""
    mpath = meta_path(path)
    try:
        f_stat = Path(path).stat()
        m_stat = mpath.stat()
        if f_stat.st_mtime_ns > m_stat.st_mtime_ns:
            return None
        meta = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    checksum = meta.get("checksum") if isinstance(meta, dict) else None
    if not isinstance(checksum, str) or meta.get("bytes") != f_stat.st_size:
        return None
    return checksum


def describe_inputs(paths: Iterable[str | Path],
                    known: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Path, size and checksum of each input file; a directory is described file by file.

    The checksum of a file comes from ``known`` (``str(path) -> checksum``: files the stage
    hashed while it read them), else from the file's own sidecar (:func:`recorded_checksum`),
    else from reading the file.
    """
    known = known or {}
    out: list[dict[str, Any]] = []
    for p in paths:
        p = Path(p)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            checksum = known.get(str(f)) or recorded_checksum(f) or file_checksum(f)
            out.append({"path": str(f), "bytes": f.stat().st_size, "checksum": checksum})
    return out


def package_versions() -> dict[str, str]:
    """Versions of Python, rtprep and the libraries that shape results."""
    versions = {"python": platform.python_version(), "rtprep": rtprep.__version__}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@dataclass
class RowAccount:
    """Rows in, each drop reason with its count (in the order they were applied), rows out.

    ``dropped_ids`` maps a reason to ``(column, ids)``: the distinct ids dropped for it.
    ``extra`` holds stage-specific numbers (e.g. coverage totals) that go into the sidecar.
    """

    stage: str
    rows_in: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    rows_out: int = 0
    dropped_ids: dict[str, tuple[str, list[Any]]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def drop(self, reason: str, count: int, *, column: str | None = None,
             ids: Iterable[Any] | None = None) -> None:
        """Record ``count`` rows dropped for ``reason`` (and, optionally, which ids)."""
        self.drops[reason] = self.drops.get(reason, 0) + int(count)
        if ids is not None:
            col = column or "id"
            prev = self.dropped_ids.get(reason, (col, []))[1]
            merged = sorted(set(prev) | set(ids), key=lambda v: (str(type(v)), v))
            self.dropped_ids[reason] = (col, merged)

    def funnel(self) -> str:
        """The original scripts' ``31,521 → 27,077 → 25,781`` line, with reasons."""
        parts = [f"{self.rows_in:,} in"]
        left = self.rows_in
        for reason, n in self.drops.items():
            left -= n
            parts.append(f"{left:,} (-{n:,} {reason})")
        parts.append(f"{self.rows_out:,} out")
        return " → ".join(parts)

    def check_balanced(self) -> None:
        """Raise if rows in minus drops does not equal rows out (a stage lost rows silently)."""
        expected = self.rows_in - sum(self.drops.values())
        if expected != self.rows_out:
            raise RuntimeError(
                f"internal error in stage {self.stage}: {self.rows_in} rows in, "
                f"{sum(self.drops.values())} dropped, but {self.rows_out} out (expected {expected})"
            )


def meta_path(output: str | Path) -> Path:
    return Path(str(output) + META_SUFFIX)


def dropped_path(output: str | Path) -> Path:
    return Path(str(output) + DROPPED_SUFFIX)


def write_sidecars(
    output: str | Path,
    account: RowAccount,
    *,
    inputs: Iterable[str | Path] = (),
    config: Mapping[str, Any] | None = None,
    seeds: Mapping[str, int] | None = None,
    balanced: bool = True,
    known: Mapping[str, str] | None = None,
) -> Path:
    """Write ``<output>.meta.json`` (and ``<output>.dropped.csv`` when ids were dropped).

    Call it *before* renaming the main output into place, so that a finished output always has
    its sidecars, and the sidecar records the output's size and checksum (from
    :func:`hashed_file` when it was written through one, else read back once). ``known``: the
    checksums of inputs hashed while they were read (:func:`describe_inputs`).
    ``balanced=False`` for stages whose rows out are not rows in minus drops (merge's join,
    coverage tables).
    """
    if balanced:
        account.check_balanced()
    output = Path(output)
    dpath = dropped_path(output)
    if account.dropped_ids:
        with atomic_output(dpath) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["reason", "column", "id"])
            for reason, (column, ids) in account.dropped_ids.items():
                for v in ids:
                    w.writerow([reason, column, v])
    else:
        with contextlib.suppress(FileNotFoundError):
            dpath.unlink()
    meta = {
        "stage": account.stage,
        "output": output.name,
        "rows_in": account.rows_in,
        "drops": account.drops,
        "rows_out": account.rows_out,
        "funnel": account.funnel(),
        "dropped_ids_file": dpath.name if account.dropped_ids else None,
        "inputs": describe_inputs(inputs, known),
        "config": dict(config or {}),
        "seeds": dict(seeds or {}),
        "versions": package_versions(),
        **({"extra": account.extra} if account.extra else {}),
        **_own_record(output),
    }
    mpath = meta_path(output)
    write_text_atomic(mpath, json.dumps(meta, indent=2, sort_keys=False, default=str) + "\n")
    return mpath


def read_meta(output: str | Path) -> dict[str, Any]:
    """Read an output's ``.meta.json``."""
    return json.loads(meta_path(output).read_text(encoding="utf-8"))
