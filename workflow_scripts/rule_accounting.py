"""Rule accounting: the run-wide table of rows in, drops per reason and rows out."""

from rtprep.smk import start

start(snakemake)
from rtprep.accounting import gather_accounting

gather_accounting(list(snakemake.input), snakemake.output[0])
