"""The Snakemake glue: the DAG helpers the rules call (dag) and the start of every workflow
script (script)."""
