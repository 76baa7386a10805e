"""Rule embed: chemistry embeddings from SMILES (RDKit, or a local ChemBERTa model)."""

from rtprep.workflow.script import start

start(snakemake)
from rtprep.chem.routes import embed_from_config

embed_from_config(
    snakemake.params.embeddings,
    snakemake.input.smiles,
    snakemake.output.parquet,
    project_with=snakemake.input.projection[0] if snakemake.input.projection else None,
)
