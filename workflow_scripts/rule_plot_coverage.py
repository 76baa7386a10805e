"""Rule plot_coverage: rows per species x compound pair, with the caps, for the report."""

from rtprep.workflow.script import start

start(snakemake)
from rtprep.report.plots import plot_coverage

plot_coverage(snakemake.input[0], snakemake.params.caps, snakemake.output[0])
