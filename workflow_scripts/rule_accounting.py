"""Rule accounting: the run-wide table of rows in, drops per reason and rows out."""

from rtprep.workflow.script import start

start(snakemake)
from rtprep.core.accounting import gather_accounting

gather_accounting(list(snakemake.input), snakemake.output[0])
