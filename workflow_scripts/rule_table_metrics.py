"""Rule table_metrics: an export's held-out metrics as an HTML table, for the report."""

from rtprep.workflow.script import start

start(snakemake)
from rtprep.report.tables import write_metrics_table

write_metrics_table(snakemake.params.entries, snakemake.output[0], export=snakemake.wildcards.hash)
