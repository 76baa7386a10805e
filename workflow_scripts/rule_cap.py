"""Rules cap and cap_train: at most N rows per (species_matrix_type, comp_id)."""

from rtprep.workflow.script import start

start(snakemake)
from rtprep.stages.cap import cap_species_compounds

folds = snakemake.input.get("folds")
cap_species_compounds(
    snakemake.input[0],
    snakemake.output[0],
    cap_per_pair=snakemake.params.cap,
    seed=snakemake.params.seed,
    folds_csv=folds,
    fold="train" if folds else None,
)
