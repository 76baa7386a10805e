"""Config coercion, libs per export and targets (rtprep.workflow), and the schema's messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from rtprep.errors import RtprepError
from rtprep.workflow import (
    coerce_config,
    export_libs,
    final_targets,
    input_bytes,
    rt_range,
    threads_for_inputs,
)
from tests.workflow_util import REPO

SCHEMA = str(REPO / "config/schema.yaml")


def load(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / name).read_text())


def test_coerce_strings_from_command_line() -> None:
    cfg = coerce_config({"libs": ["209"], "caps": "5,10", "model": {"quick": "false"},
                         "keep_merged": "True", "cap_seed": "7"})
    assert cfg["libs"] == [209]
    assert cfg["caps"] == [5, 10]
    assert cfg["model"]["quick"] is False
    assert cfg["keep_merged"] is True
    assert cfg["cap_seed"] == 7
    assert coerce_config({"libs": "ALL"})["libs"] == "all"


def test_coerce_rejects_nonsense_with_key() -> None:
    with pytest.raises(RtprepError, match=r"model\.quick"):
        coerce_config({"model": {"quick": "maybe"}})


def test_schema_fills_defaults_for_shipped_configs() -> None:
    for name in ("config.yaml", "test.yaml"):
        cfg = load(name)
        validate(cfg, SCHEMA)
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
    validate(cfg, SCHEMA)
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
