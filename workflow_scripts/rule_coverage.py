"""Rule coverage: species x compound coverage table and CSV."""

from rtprep.workflow.script import start

start(snakemake)
from rtprep.stages.coverage import species_compound_coverage

species_compound_coverage(
    snakemake.input[0],
    snakemake.output.csv,
    caps=tuple(snakemake.params.caps),
    summary_out=snakemake.output.summary,
)
