"""Rules plot_*: figures for Snakemake's report."""

from rtprep.workflow.script import start

start(snakemake)
from rtprep.report import plots

out = snakemake.output[0]
if snakemake.rule == "plot_coverage":
    plots.plot_coverage(snakemake.input[0], snakemake.params.caps, out)
elif snakemake.rule == "plot_funnel":
    plots.plot_funnel(snakemake.params.artifacts, snakemake.wildcards.lib, out)
elif snakemake.rule == "plot_classes":
    plots.plot_classes(snakemake.input.embeddings, snakemake.input.classes, out)
elif snakemake.rule == "plot_model_quality":
    plots.plot_model_quality(snakemake.params.eval_dir, out, split=snakemake.wildcards.split)
elif snakemake.rule == "plot_shrinkage":
    plots.plot_shrinkage(snakemake.params.model_dir, out)
else:
    raise ValueError(f"no figure for rule {snakemake.rule}")
