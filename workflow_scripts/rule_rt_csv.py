"""Rule rt_csv: the RT production CSV for the trainers."""

from rtprep.workflow.script import start

start(snakemake)
from rtprep.stages.rt_csv import write_rt_csv

write_rt_csv(
    snakemake.input.parquet,
    snakemake.input.species_mapping,
    snakemake.output[0],
    families=tuple(snakemake.params.families),
)
