"""Rule split: one lib's rows of the merged Parquet."""

from rtprep.workflow.script import start

start(snakemake)
from rtprep.stages.split import split_lib

rt_range = snakemake.params.rt_range
split_lib(
    snakemake.input[0],
    int(snakemake.wildcards.lib),
    snakemake.output[0],
    rt_range=None if rt_range is None else (rt_range[0], rt_range[1]),
)
