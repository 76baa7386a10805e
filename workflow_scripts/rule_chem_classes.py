"""Rule chem_classes: k-means compound classes from chemistry embeddings."""

from rtprep.workflow.script import start

start(snakemake)
from rtprep.chem.classes import build_chem_classes

build_chem_classes(
    snakemake.input[0],
    n_clusters=snakemake.params.n_clusters,
    seed=snakemake.params.seed,
    out_parquet=snakemake.output.parquet,
    out_csv=snakemake.output.csv,
)
