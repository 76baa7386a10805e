"""Config: one schema for every default, the demo's settings on the demo only, coercion, libs per
export and targets (rtprep.workflow.dag), and the schema's messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from rtprep.core import settings
from rtprep.core.errors import RtprepError
from rtprep.workflow.dag import (
    coerce_config,
    complete_config,
    export_libs,
    final_targets,
    input_bytes,
    rt_range,
    threads_for_inputs,
)
from tests.workflow_util import REPO

SCHEMA = str(settings.SCHEMA_PATH)
SHIPPED = REPO / "config" / "config.yaml"


def load(name: str) -> dict:
    """A shipped config file as the rules see it (``test.yaml`` layered over ``config.yaml``,
    as the test suite runs it)."""
    files = [SHIPPED] if name == "config.yaml" else [SHIPPED, REPO / "config" / name]
    return complete_config(settings.load_files(*files))


def test_a_users_config_gets_production_defaults(tmp_path: Path) -> None:
    """A minimal config of one's own (data location and embeddings) layered over the shipped
    one, as `snakemake --configfile mine.yaml` does: none of the demo's fast settings leak in."""
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"), "exports": ["abc1"],
        "embeddings": {"path": str(tmp_path / "emb.parquet")}}))
    cfg = complete_config(settings.load_files(SHIPPED, mine))
    assert cfg["model"]["quick"] is False
    assert cfg["model"]["advi_steps"] == settings.default("model", "advi_steps") == 20000
    assert cfg["model"]["caps"] is None  # models for every cap
    cfg["data_dir"] = str(tmp_path)  # (no export folders needed for the targets' caps)
    from rtprep.workflow.dag import model_caps

    assert model_caps(cfg) == cfg["caps"] == [5, 10]
    assert cfg["embeddings"]["path"] == str(tmp_path / "emb.parquet")
    assert cfg["rt_range"] == {}
    assert cfg["eval"]["splits"] == ["random"] and cfg["eval"]["time_column"] == "worksheet_id"
    # and the shipped file, as a whole, states only production defaults outside demo:
    shipped = yaml.safe_load(SHIPPED.read_text())
    for block in ("model", "merge", "covariates", "eval"):
        for key, value in (shipped.get(block) or {}).items():
            assert value == settings.defaults()[block][key], f"{block}.{key}"


def test_the_shipped_config_alone_runs_the_fast_demo() -> None:
    cfg = load("config.yaml")
    assert cfg["model"]["quick"] is True and cfg["model"]["caps"] == [5]
    assert cfg["model"]["quick_steps"] == 8000
    assert cfg["embeddings"]["path"].startswith("demo/")
    assert cfg["rt_range"] == {"default": [0.0, 40.0]}
    tiny = load("test.yaml")  # the test suite's tiny demo keeps its own fast settings
    assert tiny["model"]["quick_steps"] == 300
    assert tiny["embeddings"]["path"].startswith("demo/tiny")


def test_eval_splits_random_in_production_both_on_the_demo(tmp_path: Path) -> None:
    """eval.splits: [random] by default; the demo (demo.eval) and the test config run both. Each
    split gets its own evaluation and model-quality figure among the targets."""
    assert settings.default("eval", "splits") == ["random"]
    assert settings.choices("eval", "splits") == ("random", "time")
    for name in ("config.yaml", "test.yaml"):
        assert load(name)["eval"]["splits"] == ["random", "time"], name
        # the demo's injections carry their acquisition date
        assert load(name)["eval"]["time_column"] == "acquisition_date", name
    cfg = _real_export(tmp_path)
    targets = final_targets(cfg)
    for split in ("random", "time"):
        assert f"results/rt_prod/abc1/lib11_cap5/eval/{split}/metrics.json" in targets
        assert f"results/report/abc1/lib11_cap5_model_quality_{split}.png" in targets
    cfg["eval"]["splits"] = ["time"]
    targets = final_targets(cfg)
    assert not any("/eval/random/" in t or "quality_random" in t for t in targets)
    from rtprep.workflow.dag import accounted_artifacts

    arts = accounted_artifacts(cfg)
    assert any(a.endswith("abc1_lib11_time_train_cap5_chemclass_rt_prod.csv") for a in arts)
    assert any(a.endswith("abc1_lib11_time_test_chemclass_rt_prod.parquet") for a in arts)
    assert not any("_random_" in Path(a).name for a in arts)


def test_eval_splits_are_checked_and_coerced() -> None:
    from rtprep.workflow.dag import config_error_message

    assert coerce_config({"eval": {"splits": "random,time"}})["eval"]["splits"] == [
        "random", "time"]
    assert coerce_config({"eval": {"splits": "[time]"}})["eval"]["splits"] == ["time"]
    for bad, words in ((["random", "future"], ("'eval.splits[1]'", "one of random, time")),
                       ([], ("'eval.splits'", "at least 1 item")),
                       (["time", "time"], ("'eval.splits'", "non-unique"))):
        cfg = load("test.yaml")
        cfg["eval"]["splits"] = bad
        with pytest.raises(Exception) as info:
            validate(cfg, SCHEMA)
        message = config_error_message(info.value)
        assert all(w in message for w in words), (bad, message)


def test_user_config_without_embeddings_is_told_to_set_them(tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({"data_dir": str(tmp_path), "exports": ["abc1"]}))
    with pytest.raises(Exception, match="path"):
        complete_config(settings.load_files(SHIPPED, mine))


def test_defaults_come_from_the_schema() -> None:
    from rtprep.models.options import ModelOptions
    from rtprep.stages.merge import MergeOptions

    opts = ModelOptions()
    for key in ("advi_steps", "quick_steps", "screen_steps", "learning_rate", "robust",
                "robust_rounds", "slope_knots", "allow_unconverged", "group_by", "method", "seed",
                "summary_draws", "fill"):
        assert getattr(opts, key) == settings.default("model", key), key
    assert opts.nuts_chains == settings.default("model", "nuts", "chains")
    assert list(opts.families) == settings.default("covariates", "families")
    assert list(MergeOptions().key) == settings.default("merge", "key")
    from rtprep.cli import build_parser

    args = build_parser().parse_args(["chem-classes", "--embeddings", "e.parquet"])
    assert args.n_clusters == settings.default("n_clusters")
    assert args.seed == settings.default("kmeans_seed")


def _readme_defaults() -> dict[str, object]:
    """``key -> default`` from config/README.md's table; a row may name several keys
    (`` `a.b`, `.c` `` with defaults `` `1`, `2` ``)."""
    rows: dict[str, object] = {}
    for line in (REPO / "config" / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        keys = [k.strip().strip("`") for k in cells[0].split(",")]
        keys = [keys[0].rsplit(".", 1)[0] + k if k.startswith(".") else k for k in keys]
        values = (cells[1].split("`, `") if len(keys) > 1 else [cells[1]])
        for key, value in zip(keys, values, strict=True):
            text = value.strip("`")
            rows[key] = (None if text.startswith(("(required)", "—", "unset"))
                         else yaml.safe_load(text))
    return rows


def test_config_readme_table_matches_the_schema() -> None:
    """Every key of the schema is in config/README.md's table with the schema's default, and
    every key there exists in the schema (blocks are documented key by key)."""
    documented = _readme_defaults()
    flat: dict[str, object] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, sub in node.get("properties", {}).items():
            if "properties" in sub:
                walk(sub, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = sub.get("default")

    walk(settings.schema(), "")
    assert set(flat) == set(documented), (set(flat) ^ set(documented))
    for key, value in flat.items():
        assert documented[key] == value, (key, documented[key], value)


def test_run_quick_and_no_quick_win_on_the_demo_too() -> None:
    from rtprep.cli import build_overlay, build_parser

    p = build_parser()
    assert build_overlay(p.parse_args(["run", "--no-quick"]))["model"]["quick"] is False
    assert build_overlay(p.parse_args(["run", "--quick"]))["model"]["quick"] is True
    assert "model" not in build_overlay(p.parse_args(["run"]))
    cfg = settings.layer(settings.load_files(SHIPPED),
                         build_overlay(p.parse_args(["run", "--no-quick"])))
    assert complete_config(cfg)["model"]["quick"] is False


def test_coerce_strings_from_command_line() -> None:
    cfg = coerce_config({"libs": ["209"], "caps": "5,10", "model": {"quick": "false"},
                         "keep_merged": "True", "cap_seed": "7"})
    assert cfg["libs"] == [209]
    assert cfg["caps"] == [5, 10]
    assert cfg["model"]["quick"] is False
    assert cfg["keep_merged"] is True
    assert cfg["cap_seed"] == 7
    assert coerce_config({"libs": "ALL"})["libs"] == "all"


def test_a_scalar_where_a_list_belongs_is_read_as_one_item_and_said(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert coerce_config({"caps": 20})["caps"] == [20]
    assert "config key 'caps': 20 is not a list; read as [20]" in capsys.readouterr().err
    assert coerce_config({"caps": [5]})["caps"] == [5]
    assert capsys.readouterr().err == ""


def test_coerce_rejects_nonsense_with_key() -> None:
    with pytest.raises(RtprepError, match=r"model\.quick"):
        coerce_config({"model": {"quick": "maybe"}})


def test_schema_fills_defaults_for_shipped_configs() -> None:
    for name in ("config.yaml", "test.yaml"):
        cfg = load(name)
        assert cfg["merge"]["cpd_status_keep"] == ["Complete", "Complete - NFS"]
        assert cfg["eval"]["test_fraction"] == 0.2
        assert cfg["model"]["nuts"]["chains"] == 2


def test_schema_names_the_bad_key() -> None:
    cfg = load("test.yaml")
    cfg["n_clusters"] = 0
    with pytest.raises(Exception, match="n_clusters"):
        validate(cfg, SCHEMA)


def _real_export(tmp_path: Path) -> dict:
    for lib in (11, 12):
        (tmp_path / "data/abc1/create_training_data" / f"lib_id={lib}").mkdir(parents=True)
    (tmp_path / "data/abc2/create_training_data/lib_id=13").mkdir(parents=True)
    cfg = load("config.yaml")
    cfg.update(data_dir=str(tmp_path / "data"), exports=["abc1", "abc2"], caps=[5])
    return cfg


def test_libs_read_from_export_folders(tmp_path: Path) -> None:
    cfg = _real_export(tmp_path)
    assert export_libs(cfg) == {"abc1": [11, 12], "abc2": [13]}
    cfg["libs"] = [12]
    assert export_libs(cfg) == {"abc1": [12], "abc2": []}
    targets = final_targets(cfg)
    assert any(t.endswith("merged_training_abc1_lib12_cap5_chemclass_rt_prod.csv") for t in targets)
    assert not any("lib11" in t for t in targets)


def test_unknown_lib_is_an_error_naming_what_exists(tmp_path: Path) -> None:
    cfg = _real_export(tmp_path)
    cfg["libs"] = [99]
    with pytest.raises(RtprepError, match=r"\[99\].*\[11, 12, 13\]"):
        export_libs(cfg)


def test_missing_export_folder_is_named(tmp_path: Path) -> None:
    cfg = _real_export(tmp_path)
    cfg["exports"] = ["abc1", "dead"]
    with pytest.raises(RtprepError, match="dead"):
        export_libs(cfg)


def test_rt_range_per_lib_and_default() -> None:
    cfg = {"rt_range": {"default": [0, 40], "209": [0.5, 30]}}
    assert rt_range(cfg, 209) == [0.5, 30.0]
    assert rt_range(cfg, 208) == [0.0, 40.0]
    assert rt_range({}, 208) is None


def test_threads_follow_the_input_size(tmp_path: Path) -> None:
    """Small inputs run on one thread (two such jobs share a 2-core machine), large ones on
    two; a folder counts every file under it; before the inputs exist: the large count."""
    small = tmp_path / "small.parquet"
    small.write_bytes(b"x" * 1000)
    export = tmp_path / "export" / "lib_id=1"
    export.mkdir(parents=True)
    for i in range(3):
        (export / f"part{i}.parquet").write_bytes(b"y" * 400_000)
    assert input_bytes([small, tmp_path / "export"]) == 1000 + 1_200_000
    assert input_bytes([small, tmp_path / "missing.csv"]) is None
    threads = threads_for_inputs(1.0, 2)  # 1 MB
    assert threads(None, [str(small)]) == 1
    assert threads(None, [str(small), str(tmp_path / "export")]) == 2
    assert threads(None, [str(tmp_path / "not_yet.parquet")]) == 2
