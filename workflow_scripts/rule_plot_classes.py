"""Rule plot_classes: the compound classes in embedding space, for the report."""

from rtprep.workflow.script import start

start(snakemake)
from rtprep.report.plots import plot_classes

plot_classes(snakemake.input.embeddings, snakemake.input.classes, snakemake.output[0])
