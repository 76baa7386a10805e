# rtprep: Pachyderm LC-MS peak exports -> chemistry-aware RT training data and RT models.
# The Snakefile only sets up; rules live in rules/, logic in the rtprep library.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "report/workflow.rst"


# Light rules run where Snakemake runs, not as cluster jobs (profiles/slurm); the demo rule,
# which exists only on the demo, says so in rules/demo.smk.
localrules:
    all,
    accounting,
    table_metrics,
    table_accounting,


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/merge.smk"
include: "rules/cap.smk"
include: "rules/chem.smk"
include: "rules/rt_csv.smk"
include: "rules/models.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),


onsuccess:
    print(end_summary(config))
