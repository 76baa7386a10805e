"""Rule embeddings: chemistry embeddings from SMILES (RDKit, or a local ChemBERTa model)."""

from rtprep.workflow.script import start

start(snakemake)
p = snakemake.params
saved = snakemake.input.projection[0] if len(snakemake.input.projection) else None
if p.source == "chemberta":
    from rtprep.chem.chemberta import chemberta_embeddings

    chemberta_embeddings(
        snakemake.input.smiles,
        snakemake.output.parquet,
        model_dir=p.model_dir,
        n_components=None if saved else p.n_components,
        batch_size=p.batch_size,
        project_with=saved,
    )
else:
    from rtprep.chem.embed import rdkit_embeddings

    rdkit_embeddings(
        snakemake.input.smiles,
        snakemake.output.parquet,
        radius=None if saved else p.rdkit["radius"],
        n_bits=None if saved else p.rdkit["n_bits"],
        descriptors=None if saved else p.rdkit["descriptors"],
        n_components=None if saved else p.n_components,
        project_with=saved,
    )
