"""The ChemBERTa route with a tiny randomly initialised RoBERTa built by the test:
a character-level tokenizer and a 2-layer, 32-wide model saved to a local folder (nothing can be
downloaded here). Skipped when the optional extra (torch, transformers) is not installed, except
the test of the message that asks for it."""

from __future__ import annotations

import builtins
import csv
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from rtprep.chem.embed import projection_paths
from rtprep.cli import build_parser
from rtprep.core.artifacts import read_meta
from rtprep.core.errors import RtprepError

DEMO_STRUCTURES = Path(__file__).resolve().parents[1] / "resources/metabolites/demo_structures.csv"
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


SKIP = "optional extra not installed: pip install -e '.[chemberta]'"


def _backend() -> None:
    pytest.importorskip("torch", reason=SKIP)
    pytest.importorskip("transformers", reason=SKIP)
    pytest.importorskip("tokenizers", reason="tokenizers (comes with transformers) missing")


@pytest.fixture(scope="module")
def structures() -> pl.DataFrame:
    if not DEMO_STRUCTURES.is_file():
        pytest.skip(f"{DEMO_STRUCTURES} is missing")
    return pl.read_csv(DEMO_STRUCTURES).select("chem_id", "smiles").head(60)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, structures) -> Path:
    """A randomly initialised RoBERTa (2 layers, hidden 32) + character-level tokenizer."""
    _backend()
    import torch
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaModel

    folder = tmp_path_factory.mktemp("tiny_chemberta")
    chars = sorted(set("".join(structures["smiles"].to_list())))
    vocab = {t: i for i, t in enumerate(SPECIALS + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one char a token
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", mask_token="<mask>", model_max_length=128,
    ).save_pretrained(folder)
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=130, pad_token_id=1, bos_token_id=0,
        eos_token_id=2,
    )
    RobertaModel(config).save_pretrained(folder)
    return folder


def _write(df: pl.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.write_csv(path)
    return path


def _emb(path: Path) -> tuple[np.ndarray, np.ndarray]:
    df = pl.read_parquet(path)
    return df["chem_id"].to_numpy(), np.asarray(df["embedding20"].to_list(), dtype=np.float64)


def test_chemberta_route_with_tiny_local_model(structures, tiny_model, tmp_path):
    from rtprep.chem.chemberta import chemberta_embeddings

    bad = pl.DataFrame({"chem_id": [1, 2], "smiles": ["C1CC(", None]},
                       schema={"chem_id": pl.Int64, "smiles": pl.String})
    table = _write(pl.concat([structures, bad]), tmp_path / "s.csv")
    out = tmp_path / "embeddings_chemberta_pca20.parquet"
    acc = chemberta_embeddings(table, out, model_dir=tiny_model, batch_size=16)

    df = pl.read_parquet(out)
    assert dict(df.schema) == {"chem_id": pl.Int64, "smiles": pl.String,
                               "embedding20": pl.List(pl.Float64)}
    assert df.height == 60 and df["chem_id"].is_sorted()
    assert set(df["embedding20"].list.len().to_list()) == {20}
    _, e = _emb(out)
    assert np.isfinite(e).all()
    # Distinct structures, distinct embeddings (the model is random, not constant).
    assert np.unique(e.round(6), axis=0).shape[0] == structures["smiles"].n_unique()
    assert acc.drops == {"duplicate_row": 0, "invalid_smiles": 2} and acc.rows_out == 60
    meta = read_meta(out)
    assert meta["stage"] == "embed_chemberta"
    assert meta["config"]["route"] == "chemberta" and "model.safetensors" in str(meta["config"])
    with open(str(out) + ".dropped.csv", newline="") as fh:
        assert [r["id"] for r in csv.DictReader(fh)] == ["1", "2"]
    assert projection_paths(out)[1].is_file()

    # Deterministic: a rerun writes the same bytes.
    first = out.read_bytes()
    chemberta_embeddings(table, out, model_dir=tiny_model, batch_size=16)
    assert out.read_bytes() == first

    # Projection: a subset (other batches, other padding) lands where the fit put it.
    sub = tmp_path / "sub.parquet"
    chemberta_embeddings(_write(structures.slice(10, 25), tmp_path / "sub.csv"), sub,
                         model_dir=tiny_model, batch_size=7,
                         project_with=projection_paths(out)[1])
    ids_s, e_s = _emb(sub)
    ids_f, e_f = _emb(out)
    np.testing.assert_allclose(e_s, e_f[np.isin(ids_f, ids_s)], rtol=0, atol=1e-4)

    # An RDKit projection cannot be applied to ChemBERTa states (and vice versa).
    from rtprep.chem.embed import rdkit_embeddings

    with pytest.raises(RtprepError, match="fitted on 'chemberta' features, not 'rdkit'"):
        rdkit_embeddings(table, tmp_path / "x.parquet", project_with=projection_paths(out)[1])


def test_mean_pooling_ignores_padding(structures, tiny_model):
    from rtprep.chem.chemberta import mean_pooled_hidden_states

    short, long_ = "CCO", structures["smiles"].to_list()[-1]
    alone = mean_pooled_hidden_states([short], tiny_model)
    padded = mean_pooled_hidden_states([short, long_], tiny_model)
    assert alone.shape == (1, 32) and padded.shape == (2, 32)
    np.testing.assert_allclose(padded[0], alone[0], rtol=0, atol=1e-5)
    assert not np.allclose(padded[1], alone[0])


def test_cli_chemberta_and_bad_model_folder(structures, tiny_model, tmp_path, capsys):
    table = _write(structures, tmp_path / "s.csv")
    out = tmp_path / "embeddings_chemberta_pca20.parquet"
    args = build_parser().parse_args(["embed", "--smiles", str(table), "--out", str(out),
                              "--chemberta-model", str(tiny_model), "--batch-size", "8"])
    args.func(args)
    assert "60 out" in capsys.readouterr().out
    assert read_meta(out)["stage"] == "embed_chemberta"

    from rtprep.chem.chemberta import chemberta_embeddings

    with pytest.raises(RtprepError, match="ChemBERTa model folder not found"):
        chemberta_embeddings(table, tmp_path / "e.parquet", model_dir=tmp_path / "none")
    empty = tmp_path / "empty_model"
    empty.mkdir()
    with pytest.raises(RtprepError, match="cannot load a transformers model"):
        chemberta_embeddings(table, tmp_path / "e.parquet", model_dir=empty)
    assert not (tmp_path / "e.parquet").exists()


def test_missing_extra_names_what_to_install(tmp_path, monkeypatch):
    """Runs without torch too: the route must say which extra to install."""
    real_import = builtins.__import__

    def no_torch(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "torch" or name.startswith(("torch.", "transformers")):
            raise ImportError(f"No module named '{name}'", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    from rtprep.chem.chemberta import chemberta_embeddings

    with pytest.raises(RtprepError, match=r"pip install -e \"\.\[chemberta\]\""):
        chemberta_embeddings(tmp_path / "s.csv", tmp_path / "e.parquet", model_dir=tmp_path)
