"""Rule test_rows: every held-out row, attached and filtered like the training rows."""

from rtprep.workflow.script import start

start(snakemake)
from rtprep.stages.rt_csv import write_test_rows

write_test_rows(
    snakemake.input.parquet,
    snakemake.input.folds,
    snakemake.input.lib_mapping,
    snakemake.input.classes,
    snakemake.input.species_mapping,
    snakemake.output[0],
    families=tuple(snakemake.params.families),
)
