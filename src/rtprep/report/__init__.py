"""The report: figures (plots) and HTML tables (tables) for `snakemake --report`."""
