"""Rule table_accounting: an export's row accounting as an HTML table, for the report."""

from rtprep.workflow.script import start

start(snakemake)
from rtprep.report.tables import write_accounting_table

write_accounting_table(snakemake.input[0], snakemake.output[0], export=snakemake.wildcards.hash)
