"""Rule train: ridge and partial-pooling RT models from an RT production CSV."""

from rtprep.workflow.script import start

start(snakemake)
from rtprep.core.memory import reuse_freed_memory

reuse_freed_memory()
from rtprep.models.api import train
from rtprep.models.options import ModelOptions

train(
    snakemake.input.csv,
    snakemake.params.out,
    options=ModelOptions.from_config(snakemake.params.model, snakemake.params.families),
    embeddings=snakemake.input.embeddings,
)
