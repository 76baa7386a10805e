"""Rules table_*: tables for Snakemake's report."""

from rtprep.workflow.script import start

start(snakemake)
from rtprep.report import tables as report_tables

out = snakemake.output[0]
export = snakemake.wildcards.hash
if snakemake.rule == "table_metrics":
    report_tables.write_metrics_table(snakemake.params.entries, out, export=export)
elif snakemake.rule == "table_accounting":
    report_tables.write_accounting_table(snakemake.input[0], out, export=export)
else:
    raise ValueError(f"no table for rule {snakemake.rule}")
