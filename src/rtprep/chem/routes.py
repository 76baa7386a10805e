"""One entry to both embedding routes, for the command line (``rtprep embed``) and the workflow
(rule ``embed``): RDKit features (:mod:`rtprep.chem.embed`) or a local ChemBERTa model
(:mod:`rtprep.chem.chemberta`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rtprep.core.artifacts import RowAccount
from rtprep.core.errors import RtprepError


def embed_smiles(
    smiles: str | Path,
    out: str | Path,
    *,
    n_components: int | None = None,
    project_with: str | Path | None = None,
    model_dir: str | Path | None = None,
    batch_size: int = 32,
    radius: int | None = None,
    n_bits: int | None = None,
    descriptors: bool | None = None,
) -> RowAccount:
    """Embeddings of the chemicals of ``smiles``: with ChemBERTa when ``model_dir`` is given,
    else with RDKit. ``None`` is each setting's default; with ``project_with`` a setting given
    (not ``None``) must match the saved projection's."""
    if model_dir is not None:
        if radius is not None or n_bits is not None or descriptors is not None:
            raise RtprepError("--radius, --n-bits and --no-descriptors are RDKit options; "
                              "they do not apply with --chemberta-model")
        from rtprep.chem.chemberta import chemberta_embeddings

        return chemberta_embeddings(smiles, out, model_dir=model_dir, n_components=n_components,
                                    batch_size=batch_size, project_with=project_with)
    from rtprep.chem.embed import rdkit_embeddings

    return rdkit_embeddings(smiles, out, radius=radius, n_bits=n_bits, descriptors=descriptors,
                            n_components=n_components, project_with=project_with)


def embed_from_config(
    embeddings: Mapping[str, Any], smiles: str | Path, out: str | Path,
    project_with: str | Path | None = None,
) -> RowAccount:
    """The workflow's embeddings, from the config's ``embeddings`` block (``source``: ``rdkit``
    or ``chemberta``, ``n_components``, ``rdkit``, ``model_dir``, ``batch_size``).

    With a saved projection (``project_with``) the features and the width are the
    projection's: the config's feature settings are not compared with it, as the config holds
    a value for every key (its defaults included) and cannot say which one a user set."""
    chemberta = embeddings["source"] == "chemberta"
    rdkit = embeddings["rdkit"]
    own = project_with is None
    return embed_smiles(
        smiles, out,
        model_dir=embeddings.get("model_dir") if chemberta else None,
        batch_size=embeddings["batch_size"],
        radius=rdkit["radius"] if own and not chemberta else None,
        n_bits=rdkit["n_bits"] if own and not chemberta else None,
        descriptors=rdkit["descriptors"] if own and not chemberta else None,
        n_components=embeddings["n_components"] if own else None,
        project_with=project_with,
    )
