"""Rule evaluate: models trained on the train folds, scored on every held-out row."""

from rtprep.workflow.script import start

start(snakemake)
from rtprep.core.memory import reuse_freed_memory

reuse_freed_memory()
from rtprep.models.evaluate import evaluate
from rtprep.models.options import ModelOptions

evaluate(
    None,
    snakemake.input.train_csv,
    snakemake.input.test_rows,
    snakemake.params.out,
    options=ModelOptions.from_config(snakemake.params.model, snakemake.params.families),
    embeddings=snakemake.input.embeddings,
    truth=snakemake.input.get("truth"),
)
