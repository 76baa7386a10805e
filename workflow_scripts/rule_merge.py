"""Rule merge: one export's shards -> merged_training_<hash>.parquet."""

from rtprep.workflow.script import start

start(snakemake)
from rtprep.stages.merge import MergeOptions, merge_export

merge_export(
    snakemake.params.export,
    snakemake.output[0],
    MergeOptions.from_config(snakemake.params.merge),
)
