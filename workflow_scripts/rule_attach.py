"""Rule attach: CHEM_ID and compound_class, unmappable rows dropped (counted)."""

from rtprep.workflow.script import start

start(snakemake)
from rtprep.stages.attach import attach_chem_classes

attach_chem_classes(
    snakemake.input.parquet,
    snakemake.input.lib_mapping,
    snakemake.input.classes,
    snakemake.output[0],
)
