"""Rule demo: generate the embedded demo export under demo.dir."""

from rtprep.workflow.script import start

start(snakemake)
from rtprep.demo import generate_demo

generate_demo(
    snakemake.params.out,
    rows=snakemake.params.rows,
    seed=snakemake.params.seed,
    libs=snakemake.params.libs,
)
