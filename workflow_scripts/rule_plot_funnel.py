"""Rule plot_funnel: one RT CSV's row accounting, stage by stage, for the report."""

from rtprep.workflow.script import start

start(snakemake)
from rtprep.report.plots import plot_funnel

plot_funnel(snakemake.input.artifacts, snakemake.wildcards.lib, snakemake.output[0])
