"""Rule plot_shrinkage: how far the pooled fit pulls groups and compounds, for the report."""

from rtprep.workflow.script import start

start(snakemake)
from rtprep.report.plots import plot_shrinkage

plot_shrinkage(snakemake.params.model_dir, snakemake.output[0])
