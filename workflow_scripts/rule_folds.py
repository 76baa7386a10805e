"""Rule folds: whole sample sets into train and test folds, for one split of eval.splits."""

from rtprep.workflow.script import start

start(snakemake)
from rtprep.stages.cap import assign_folds

assign_folds(
    snakemake.input[0],
    snakemake.output[0],
    test_fraction=snakemake.params.test_fraction,
    fold_seed=snakemake.params.fold_seed,
    split=snakemake.wildcards.split,
    time_column=snakemake.params.time_column or "worksheet_id",
)
