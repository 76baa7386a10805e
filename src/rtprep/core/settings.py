"""The workflow's configuration: its schema (shipped in the package), the defaults it states, and
how a config is resolved before any rule sees it.

The schema (``rtprep/data/schema.yaml``) is the one place for defaults and allowed values: the
Snakefile validates against it (filling what a config leaves out), the option dataclasses take
their defaults from it (:func:`default`), ``coerce_config`` finds the keys to coerce in it
(:func:`typed_keys`), and the CLI's defaults are read from it.

The demo's own choices live under ``demo:`` (``demo.model``, ``demo.embeddings``,
``demo.rt_range``, ``demo.eval``) and apply only while ``data_dir`` lies inside ``demo.dir``, as
defaults that what a config sets itself overrides (:func:`resolve`): a config of your own, written
from scratch or layered over the shipped one, gets the production defaults for every key it leaves
out.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).parents[1] / "data" / "schema.yaml"

#: Keys under ``demo:`` that override the top-level block of the same name on the demo.
DEMO_OVERRIDES = ("model", "embeddings", "rt_range", "eval")


@functools.cache
def schema() -> dict[str, Any]:
    """The config schema (a JSON schema, as YAML)."""
    import yaml

    return yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))


def _node(path: tuple[str, ...]) -> dict[str, Any]:
    node = schema()
    for key in path:
        node = node["properties"][key]
    return node


def default(*path: str) -> Any:
    """The schema's default of the key at ``path`` (``default("model", "advi_steps")``), a copy.

    A key without a default in the schema is a programming error (KeyError)."""
    node = _node(path)
    if "default" not in node:
        raise KeyError(f"config key {'.'.join(path)} has no default in {SCHEMA_PATH.name}")
    return copy.deepcopy(node["default"])


def choices(*path: str) -> tuple[Any, ...]:
    """The values the schema allows at ``path``: its ``enum``, or its items' for a list
    (``choices("eval", "splits")`` -> ``("random", "time")``)."""
    node = _node(path)
    return tuple(node.get("items", node)["enum"])


def defaults() -> dict[str, Any]:
    """Every default the schema states, nested as a config (keys without one left out)."""

    def walk(node: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, sub in node.get("properties", {}).items():
            if "properties" in sub:
                out[key] = walk(sub)
            elif "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
        return out

    return walk(schema())


def typed_keys() -> dict[str, list[tuple[str, ...]]]:
    """Key paths by the type values given as strings (``--config``) must be coerced to:
    ``bool``, ``int``, ``int_list`` (a list of integers, possibly null), ``number`` and
    ``word_list`` (a list of words from a fixed set, e.g. ``eval.splits``)."""
    out: dict[str, list[tuple[str, ...]]] = {"bool": [], "int": [], "int_list": [],
                                            "number": [], "word_list": []}

    def kind(node: Mapping[str, Any]) -> str | None:
        t = node.get("type")
        types = set(t) if isinstance(t, list) else {t}
        if "boolean" in types:
            return "bool"
        if "integer" in types:
            return "int"
        if "number" in types:
            return "number"
        if "array" in types and node.get("items", {}).get("type") == "integer":
            return "int_list"
        if "array" in types and "enum" in node.get("items", {}):
            return "word_list"
        return None

    def walk(node: Mapping[str, Any], path: tuple[str, ...]) -> None:
        for key, sub in node.get("properties", {}).items():
            if "properties" in sub:
                walk(sub, (*path, key))
            elif (k := kind(sub)) is not None:
                out[k].append((*path, key))

    walk(schema(), ())
    return out


def demo_active(config: Mapping[str, Any]) -> bool:
    """True when ``data_dir`` lies inside the demo folder (then the demo rule provides inputs)."""
    demo_dir = Path(config.get("demo", {}).get("dir", default("demo", "dir")))
    return Path(config["data_dir"]).is_relative_to(demo_dir)


def resolve(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config the rules use: on the demo, each block of :data:`DEMO_OVERRIDES` under
    ``demo:`` is the default of the top-level block of the same name (what the config sets
    there itself wins, key by key); elsewhere the config as given. Returns a copy."""
    cfg = copy.deepcopy(dict(config))
    if not demo_active(cfg):
        return cfg
    demo = cfg.get("demo") or {}
    for block in DEMO_OVERRIDES:
        if demo.get(block):
            cfg[block] = layer(demo[block], cfg.get(block) or {})
    return cfg


def layer(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``overlay`` laid over ``base`` key by key, mappings merged recursively (what Snakemake
    does with several config files). Returns a copy."""
    out = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = layer(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_files(*paths: str | Path) -> dict[str, Any]:
    """YAML config files layered in order (:func:`layer`); a file that is not a mapping is an
    error naming it."""
    import yaml

    from rtprep.core.errors import RtprepError

    cfg: dict[str, Any] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise RtprepError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise RtprepError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, Mapping):
            raise RtprepError(f"{path}: expected a mapping at the top level")
        cfg = layer(cfg, data)
    return cfg
