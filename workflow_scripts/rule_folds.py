"""Rule folds: whole sample sets into train and test folds."""

from rtprep.smk import start

start(snakemake)
from rtprep.sample import assign_folds

assign_folds(
    snakemake.input[0],
    snakemake.output[0],
    test_fraction=snakemake.params.test_fraction,
    fold_seed=snakemake.params.fold_seed,
)
