"""Rule rt_csv: the RT production CSV for the trainers."""

from rtprep.workflow.script import start

start(snakemake)
from rtprep.stages.rt_csv import make_rt_prod_csv

make_rt_prod_csv(
    snakemake.input.parquet,
    snakemake.input.species_mapping,
    snakemake.output[0],
    families=tuple(snakemake.params.families),
)
