"""Rule rt_csv (seed step 7): the RT production CSV for the trainers."""

from rtprep.smk import start

start(snakemake)
from rtprep.rtcsv import make_rt_prod_csv

make_rt_prod_csv(
    snakemake.input.parquet,
    snakemake.input.species_mapping,
    snakemake.output[0],
    families=tuple(snakemake.params.families),
)
