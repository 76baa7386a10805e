"""What the Snakefile needs to know, as tested Python: config coercion, libs per export, file names.

``rules/common.smk`` imports these; nothing here imports polars, so parsing the workflow is quick.
"""

from __future__ import annotations

import copy
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rtprep.core import settings
from rtprep.core.errors import RtprepError
from rtprep.core.paths import Layout, train_kind
from rtprep.core.settings import demo_active
from rtprep.demo.layout import EXPORTS as DEMO_EXPORTS

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce_bool(value: Any, key: str) -> Any:
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise RtprepError(f"config key '{key}': expected true or false, got {value!r}")
    return value


def _coerce_int(value: Any, key: str) -> Any:
    if isinstance(value, str):
        if re.fullmatch(r"-?\d+", value.strip()):
            return int(value)
        raise RtprepError(f"config key '{key}': expected an integer, got {value!r}")
    return value


def _coerce_number(value: Any, key: str) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise RtprepError(f"config key '{key}': expected a number, got {value!r}") from None
    return value


def _coerce_int_list(value: Any, key: str) -> Any:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        # a YAML scalar where a list belongs (caps: 20): read as one item, and say so
        print(f"rtprep: config key '{key}': {value} is not a list; read as [{value}]",
              file=sys.stderr)
        return [value]
    if isinstance(value, str | int):
        value = [v for v in re.split(r"[,\s\[\]]+", str(value)) if v]
    if isinstance(value, list):
        return [_coerce_int(v, key) for v in value]
    return value


def _coerce_word_list(value: Any, key: str) -> Any:
    if isinstance(value, str):  # "random,time" or "[random, time]"
        return [v for v in re.split(r"[,\s\[\]]+", value) if v]
    return value


def coerce_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Coerce values that arrive as strings from ``--config`` (``libs=[209]`` gives ``['209']``,
    ``quick=false`` a non-empty string) to the types the schema expects. Returns a copy."""
    cfg = copy.deepcopy(dict(config))

    def walk(path: tuple[str, ...], fn: Any) -> None:
        node: Any = cfg
        for k in path[:-1]:
            if not isinstance(node, dict) or k not in node:
                return
            node = node[k]
        if isinstance(node, dict) and path[-1] in node:
            node[path[-1]] = fn(node[path[-1]], ".".join(path))

    coercers = {"bool": _coerce_bool, "int": _coerce_int, "int_list": _coerce_int_list,
                "number": _coerce_number, "word_list": _coerce_word_list}
    for kind, paths in settings.typed_keys().items():  # the schema says which keys are typed
        for p in paths:
            walk(p, coercers[kind])
    libs = cfg.get("libs")
    if libs is not None and not (isinstance(libs, str) and libs.strip().lower() == "all"):
        cfg["libs"] = _coerce_int_list(libs, "libs")
    elif isinstance(libs, str):
        cfg["libs"] = "all"
    if isinstance(cfg.get("exports"), str):
        cfg["exports"] = [e for e in re.split(r"[,\s\[\]]+", cfg["exports"]) if e]
    return cfg


def complete_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config the rules see: the demo's settings laid over it (on the demo only,
    :func:`rtprep.core.settings.resolve`), strings from ``--config`` coerced, the schema's defaults
    filled in and checked (``snakemake.utils.validate``). Returns a copy; a bad config raises
    (:func:`config_error_message` words it)."""
    from snakemake.utils import validate

    cfg = coerce_config(settings.resolve(config))
    validate(cfg, schema=str(settings.SCHEMA_PATH))
    return cfg


def _config_key(path: Iterable[Any]) -> str:
    """``model.nuts.chains``, ``caps[0]``: a key path as a user writes it."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _allowed(schema: Mapping[str, Any]) -> str:
    """What a schema node allows, in words (``an integer >= 1``, ``one of file, rdkit``)."""
    if "const" in schema:
        return repr(schema["const"])
    if "enum" in schema:
        values = [str(v) for v in schema["enum"]]
        return repr(values[0]) if len(values) == 1 else "one of " + ", ".join(values)
    alternatives = schema.get("oneOf") or schema.get("anyOf")
    if alternatives:
        return " or ".join(_allowed(alt) for alt in alternatives)
    bounds = [f"{op} {schema[k]}" for k, op in (("minimum", ">="), ("exclusiveMinimum", ">"),
                                                 ("maximum", "<="), ("exclusiveMaximum", "<"))
              if k in schema]
    bound = " " + " and ".join(bounds) if bounds else ""
    kind = schema.get("type")
    if kind == "integer":
        return f"an integer{bound}"
    if kind == "number":
        return f"a number{bound}"
    if kind == "boolean":
        return "true or false"
    if kind == "string" or (kind is None and "pattern" in schema):
        return "a string" + (f" matching {schema['pattern']}" if "pattern" in schema else "")
    if kind == "array":
        lo, hi = schema.get("minItems"), schema.get("maxItems")
        size = (f" of exactly {lo} items" if lo is not None and lo == hi
                else f" of at least {lo} item(s)" if lo else "")
        items = schema.get("items")
        return f"a list{size}" + (f", each {_allowed(items)}" if items else "")
    if kind == "object":
        keys = list(schema.get("properties", {}))
        return "a mapping" + (f" with keys {', '.join(keys)}" if keys else "")
    return "see the schema"


def config_error_message(exc: BaseException) -> str:
    """One message for a config that fails coercion or the schema (``rtprep/data/schema.yaml``): the
    key, the value and what is allowed, instead of the schema dump of a raw validation error.

    ``exc`` is an :class:`RtprepError` (coercion, libs) or the error of
    ``snakemake.utils.validate``, whose cause is a ``jsonschema`` ``ValidationError``.
    """
    from jsonschema.exceptions import ValidationError

    err: BaseException | None = exc
    while err is not None and not isinstance(err, ValidationError):
        err = err.__cause__ or err.__context__
    if err is None:
        return str(exc)
    assert isinstance(err, ValidationError)
    key = _config_key(err.absolute_path)
    hint = " (config/README.md documents every key)"
    if err.validator == "additionalProperties" and isinstance(err.instance, Mapping):
        known = list(err.schema.get("properties", {}))
        unknown = [k for k in err.instance if k not in known]
        names = ", ".join(repr(_config_key([*err.absolute_path, k])) for k in unknown)
        where = f"under '{key}'" if key else "at the top level"
        return (f"unknown config key(s) {names}; allowed {where}: {', '.join(known)}" + hint)
    if err.validator == "required":
        return f"config{f' key {key!r}' if key else ''}: {err.message}" + hint
    allowed = _allowed(err.schema)
    if "description" in err.schema:
        allowed += f" ({err.schema['description']})"
    return f"config key '{key}': {err.message}; allowed: {allowed}" + hint


def export_dir(config: Mapping[str, Any], export: str) -> Path:
    return Path(config["data_dir"]) / export


def libs_of_export(config: Mapping[str, Any], export: str) -> list[int]:
    """The lib ids an export holds: from its hive folders (``create_training_data/lib_id=<L>``),
    or, for a demo not yet generated, from the demo's known layout."""
    if demo_active(config):
        wanted = set(config.get("demo", {}).get("libs", ()))
        return sorted(lib for lib in DEMO_EXPORTS.get(export, ()) if lib in wanted)
    peaks = export_dir(config, export) / "create_training_data"
    if not peaks.is_dir():
        raise RtprepError(
            f"{peaks}: export folder missing or incomplete (no create_training_data/); "
            f"check data_dir and exports in the config"
        )
    libs = []
    for d in peaks.iterdir():
        m = re.fullmatch(r"lib_id=(\d+)", d.name)
        if m and d.is_dir():
            libs.append(int(m.group(1)))
    return sorted(libs)


def export_libs(config: Mapping[str, Any]) -> dict[str, list[int]]:
    """Libs to process per export: every lib (``libs: all``) or the requested ones an export
    holds. A requested lib that no export holds is an error naming what there is."""
    found = {e: libs_of_export(config, e) for e in config["exports"]}
    libs = config.get("libs", "all")
    if libs == "all":
        return found
    requested = {int(x) for x in libs}
    present = {lib for ls in found.values() for lib in ls}
    missing = sorted(requested - present)
    if missing:
        raise RtprepError(
            f"config 'libs': lib(s) {missing} are in none of the exports "
            f"{list(config['exports'])} under {config['data_dir']}; they hold {sorted(present)}: "
            "ask for some of those (or libs: all)"
        )
    return {e: [lib for lib in ls if lib in requested] for e, ls in found.items()}


def rt_range(config: Mapping[str, Any], lib: int | str) -> list[float] | None:
    """The valid apex_rt range for a lib (its own entry, else ``default``), or None."""
    ranges = config.get("rt_range") or {}
    r = ranges.get(str(lib), ranges.get(int(lib), ranges.get("default")))
    return None if r is None else [float(r[0]), float(r[1])]


def model_caps(config: Mapping[str, Any]) -> list[int]:
    """The caps whose RT CSVs get models: those of ``caps`` listed in ``model.caps``; every cap
    when ``model.caps`` is unset or names none of them (a config of your own with other caps,
    layered over the shipped one, then still trains models)."""
    caps = [int(c) for c in config["caps"]]
    wanted = config["model"].get("caps")
    if wanted is None:
        return caps
    return [c for c in caps if c in {int(w) for w in wanted}] or caps


def final_targets(config: Mapping[str, Any]) -> list[str]:
    """Every file ``rule all`` asks for."""
    p = Layout.from_config(config)
    out: list[str] = [p.figure(f"chem_classes_k{int(config['n_clusters'])}")]
    for export, libs in export_libs(config).items():
        for lib in libs:
            out.append(p.coverage(export, lib)[0])
            out.append(p.figure("coverage", export, lib))
            for cap in config["caps"]:
                out.append(p.rt_csv(export, lib, cap))
                out.append(p.figure("funnel", export, lib, cap))
            for cap in model_caps(config):
                if config["model"]["train"]:
                    out.append(p.model_file(export, lib, cap))
                    out.append(p.figure("shrinkage", export, lib, cap))
                if config["model"]["evaluate"]:
                    for split in config["eval"]["splits"]:
                        out.append(p.eval_file(export, lib, cap, split=split))
                        out.append(p.figure(f"model_quality_{split}", export, lib, cap))
        if libs:
            out.append(p.table("row_accounting", export))
            if config["model"]["evaluate"]:
                out.append(p.table("metrics", export))
    out.append(p.accounting)
    return out


def accounted_artifacts(config: Mapping[str, Any]) -> list[str]:
    """The data artifacts (merge to rt_csv) whose sidecars the run-wide accounting table gathers."""
    p = Layout.from_config(config)
    out: list[str] = []
    for export, libs in export_libs(config).items():
        if config.get("keep_merged", True) and libs:
            out.append(p.merged(export))
        for lib in libs:
            out.append(p.lib(export, lib))
            splits = config["eval"]["splits"] if config["model"]["evaluate"] else []
            for split in splits:
                out.append(p.test_rows(export, lib, split))
            evaluated = model_caps(config) if splits else []
            for cap in dict.fromkeys([*config["caps"], *evaluated]):
                kinds = ["cap"] + ([train_kind(s) for s in splits] if cap in evaluated else [])
                for kind in kinds:
                    out.append(p.capped(export, lib, cap, kind))
                    out.append(p.chemclass(export, lib, cap, kind))
                    out.append(p.rt_csv(export, lib, cap, kind))
    return out


def check_inputs(config: Mapping[str, Any]) -> list[str]:
    """Read every input the config names that no rule makes (mapping CSVs, species mappings,
    the embeddings file or the SMILES table) with the stages' own readers, when the DAG is built:
    a bad one stops the run in seconds with the stage's one-line message, before any job.
    Returns the files checked. (On the demo, the demo rule writes them: nothing to check.)"""
    if settings.demo_active(config):
        return []
    from rtprep.stages.attach import read_lib_mapping
    from rtprep.stages.rt_csv import read_species_mapping

    p = Layout.from_config(config)
    checked: list[str] = []
    libs = export_libs(config)
    for lib in sorted({lib for ls in libs.values() for lib in ls}):
        read_lib_mapping(p.lib_mapping(lib))
        checked.append(p.lib_mapping(lib))
    for export, ls in libs.items():
        for lib in ls:
            read_species_mapping(p.species_mapping(export, lib))
            checked.append(p.species_mapping(export, lib))
    emb = config["embeddings"]
    if emb.get("source", "file") == "file":
        from rtprep.core.embeddings import read_embeddings

        read_embeddings(emb["path"])
        checked.append(emb["path"])
    else:
        from rtprep.chem.embed import read_smiles_table

        read_smiles_table(emb["smiles"])
        checked.append(emb["smiles"])
    return checked


def split_words(config: Mapping[str, Any], split: str) -> str:
    """A split in words, for the end-of-run summary: ``random split, 20% of sample sets held
    out``, ``time split, latest 20% of worksheets by worksheet_id held out``."""
    share = f"{float(config['eval']['test_fraction']):.0%}"
    if split == "time":
        return (f"time split, latest {share} of worksheets by "
                f"{config['eval']['time_column']} held out")
    return f"{split} split, {share} of sample sets held out"


def end_summary(config: Mapping[str, Any]) -> str:
    """What a finished run built, where: per lib and cap the RT CSV and its rows (from its
    sidecar), and where models were evaluated, per split, pooled and ridge RMSE, MAE and coverage
    on the held-out rows; then the accounting table and the command that builds the report."""
    import json

    p = Layout.from_config(config)
    lines = ["rtprep: finished. RT production CSVs (rows), and held-out model scores:"]
    for export, libs in export_libs(config).items():
        for lib in libs:
            for cap in config["caps"]:
                csv = p.rt_csv(export, lib, cap)
                meta = Path(csv + ".meta.json")
                rows = (json.loads(meta.read_text(encoding="utf-8")).get("rows_out")
                        if meta.is_file() else None)
                lines.append(f"  lib {lib}, cap {cap}: {csv} "
                             f"({'?' if rows is None else f'{rows:,}'} rows)")
                for split in config["eval"]["splits"]:
                    metrics = Path(p.eval_file(export, lib, cap, split=split))
                    if not metrics.is_file():
                        continue
                    overall = json.loads(metrics.read_text(encoding="utf-8"))["overall"]
                    lines.append(f"    {split_words(config, split)} ({metrics}):")
                    for m in ("pooled", "ridge"):
                        s = overall.get(m) or {}
                        if s.get("rmse") is not None:
                            lines.append(f"      {m:<6} RMSE {s['rmse']:.4g}  MAE {s['mae']:.4g}"
                                         f"  95% coverage {s['coverage95']:.3f}")
    lines.append(f"  row accounting: {p.accounting}")
    lines.append("  report: snakemake --report report.html (with the same --configfile)")
    return "\n".join(lines)


def input_bytes(paths: Iterable[str | Path]) -> int | None:
    """Total size of ``paths`` (a folder counts every file under it); None if one is missing."""
    total = 0
    for p in map(Path, paths):
        if p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            total += p.stat().st_size
        else:
            return None
    return total


def threads_for_inputs(small_mb: float, large: int = 2) -> Any:
    """A rule's ``threads``: 1 when its inputs total under ``small_mb`` MB, else ``large``.

    Small inputs gain nothing from a second thread, and a 2-thread job waits until both cores
    are free: on a small machine one long 1-thread job (a model fit) then holds back every
    2-thread job behind it. Snakemake evaluates threads again once the inputs exist; before
    that (a new run's DAG, a dry-run) the size is unknown: ``large``. (``input.size_mb`` cannot
    be used: while the DAG is built it is not an int, which threads must be.)
    """

    def threads(wildcards: Any, input: Any) -> int:  # Snakemake passes these names
        size = input_bytes(str(f) for f in input)
        if size is None:
            return large
        return 1 if size < small_mb * 1e6 else large

    return threads
