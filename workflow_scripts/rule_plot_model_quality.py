"""Rule plot_model_quality: one split's held-out model quality, for the report."""

from rtprep.workflow.script import start

start(snakemake)
from rtprep.report.plots import plot_model_quality

plot_model_quality(snakemake.params.eval_dir, snakemake.output[0], split=snakemake.wildcards.split)
