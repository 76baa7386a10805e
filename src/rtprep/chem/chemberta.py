"""ChemBERTa route: embeddings from a *local* transformers model folder.

Each SMILES is tokenised with the folder's tokenizer, run through the model, and its last hidden
state is mean-pooled over the real tokens (weighted by the attention mask, so padding does not
count). The pooled vectors are then standardised per dimension and reduced by PCA exactly as the
RDKit route does (:mod:`.embed`): same output contract (``chem_id, smiles, embedding20``),
same saved projection files, same ``project_with``, same ``invalid_smiles`` accounting (SMILES
that RDKit cannot parse get no embedding, so both routes embed the same chemicals).

torch and transformers are an optional extra (``pip install -e ".[chemberta]"``), imported only
here and only when this route runs. Nothing is downloaded: the folder is opened with
``local_files_only=True``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from rtprep.chem.embed import (
    DEFAULT_N_COMPONENTS,
    SCALE_STANDARDIZE,
    Block,
    Projection,
    embed_table,
    load_for_projection,
)
from rtprep.core.artifacts import RowAccount, file_checksum
from rtprep.core.errors import RtprepError

log = logging.getLogger(__name__)

EXTRA_HINT = 'pip install -e ".[chemberta]"  (torch and transformers)'


def _import_backend() -> tuple[Any, Any, Any]:
    """``(torch, AutoTokenizer, AutoModel)``, or a clear error naming the extra to install."""
    try:
        import torch
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise RtprepError(
            f"the ChemBERTa route needs torch and transformers, which are not installed "
            f"({exc.name or exc}); install the optional extra: {EXTRA_HINT}"
        ) from exc
    _quiet_transformers()
    return torch, AutoTokenizer, AutoModel


def _model_fingerprint(model_dir: Path) -> dict[str, Any]:
    """Which model produced the features: the folder and a checksum of its files, so that a
    projection is not silently applied to another model's hidden states."""
    files = sorted(f for f in model_dir.rglob("*") if f.is_file())
    return {
        "model_dir": str(model_dir),
        "model_files": {str(f.relative_to(model_dir)): file_checksum(f) for f in files},
    }


def _load(model_dir: Path) -> tuple[Any, Any, Any]:
    torch, auto_tokenizer, auto_model = _import_backend()
    if not model_dir.is_dir():
        raise RtprepError(f"{model_dir}: ChemBERTa model folder not found (a local folder with "
                          "config.json, the weights and the tokenizer files)")
    try:
        tokenizer = auto_tokenizer.from_pretrained(str(model_dir), local_files_only=True)
        model = auto_model.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise RtprepError(f"{model_dir}: cannot load a transformers model and tokenizer from "
                          f"this folder: {exc}") from exc
    model.eval()
    return torch, tokenizer, model


def _quiet_transformers() -> None:
    """No progress bars in logs (transformers draws one per weight load)."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except (ImportError, AttributeError):  # pragma: no cover - older/newer transformers
        pass


def iter_batches(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` over ``range(n)``."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def mean_pooled_hidden_states(
    smiles: list[str], model_dir: str | Path, *, batch_size: int = 32
) -> np.ndarray:
    """The attention-mask-weighted mean of the last hidden state of each SMILES
    (float64, shape ``(len(smiles), hidden_size)``), in the order given."""
    model_dir = Path(model_dir)
    torch, tokenizer, model = _load(model_dir)
    if tokenizer.pad_token is None:
        raise RtprepError(f"{model_dir}: the tokenizer has no padding token; batches need one")
    # RoBERTa-style models reserve two positions; stay within both the tokenizer's and the
    # model's limits.
    limit = int(getattr(model.config, "max_position_embeddings", 512)) - 2
    model_max = getattr(tokenizer, "model_max_length", limit) or limit
    max_length = int(min(limit, model_max))
    hidden = int(model.config.hidden_size)
    out = np.zeros((len(smiles), hidden), dtype=np.float64)
    n_truncated = 0
    with torch.inference_mode():
        for sl in iter_batches(len(smiles), batch_size):
            batch = smiles[sl]
            enc = tokenizer(batch, padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
            n_truncated += int((enc["attention_mask"].sum(dim=1) >= max_length).sum())
            states = model(input_ids=enc["input_ids"],
                           attention_mask=enc["attention_mask"]).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(torch.float64)
            summed = (states.to(torch.float64) * mask).sum(dim=1)
            out[sl] = (summed / mask.sum(dim=1).clamp(min=1.0)).numpy()
    if n_truncated:
        log.warning("%d SMILES reached the model's %d-token limit and were truncated",
                    n_truncated, max_length)
    return out


def chemberta_embeddings(
    smiles_table: str | Path,
    out: str | Path,
    *,
    model_dir: str | Path,
    n_components: int | None = None,
    batch_size: int = 32,
    project_with: str | Path | None = None,
) -> RowAccount:
    """Embed the chemicals of ``smiles_table`` with a local ChemBERTa (any transformers encoder).

    Mean-pooled last hidden states, standardised per dimension, PCA to ``n_components``
    (default 20). Output, sidecars, saved projection and ``project_with`` as in
    :func:`rtprep.chem.embed.rdkit_embeddings`; a projection fitted on one model's states refuses
    another model's (checksums of the model folder's files).
    """
    model_dir = Path(model_dir)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise RtprepError(f"batch_size must be a positive integer, got {batch_size!r}")
    _import_backend()  # fail early, before reading anything, if the extra is missing
    if not model_dir.is_dir():
        raise RtprepError(f"{model_dir}: ChemBERTa model folder not found")
    model_id = _model_fingerprint(model_dir)
    proj: Projection | None = None
    if project_with is not None:
        proj = load_for_projection(project_with, "chemberta", {"n_components": n_components})
        if proj.settings.get("model_files") != model_id["model_files"]:
            raise RtprepError(
                f"{project_with}: was fitted on the hidden states of another model "
                f"({proj.settings.get('model_dir')}) than {model_dir}; refit for this model"
            )
        settings: dict[str, Any] = dict(proj.settings)
        n_components = proj.n_components
    else:
        import torch
        import transformers

        settings = {
            "route": "chemberta",
            "pooling": "attention-mask weighted mean of the last hidden state",
            "scaling": "standardised per dimension",
            **model_id,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        }
        n_components = DEFAULT_N_COMPONENTS if n_components is None else n_components

    def featurize(valid: pl.DataFrame, mols: list[Any], s: Mapping[str, Any]) -> np.ndarray:
        # The model reads the SMILES as written (its tokenizer was trained on such strings).
        smiles = [v.strip() for v in valid["smiles"].to_list()]
        return mean_pooled_hidden_states(smiles, model_dir, batch_size=batch_size)

    def blocks(s: Mapping[str, Any]) -> list[Block]:
        from transformers import AutoConfig

        hidden = int(AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
                     .hidden_size)
        return [Block("hidden", tuple(f"hidden_{j}" for j in range(hidden)), SCALE_STANDARDIZE)]

    return embed_table(
        smiles_table, out, stage="embed_chemberta", featurize=featurize, blocks=blocks,
        settings=settings, n_components=n_components, project_with=project_with,
        projection=proj, extra_inputs=[model_dir],
    )
