# Stage rt_csv: RT production CSVs (the trainers' contract), and every held-out row of each split
# for evaluation.


rule rt_csv:
    input:
        parquet=P.chemclass(*HLC, kind="{kind}"),
        species_mapping=species_mapping,
    output:
        P.rt_csv(*HLC, kind="{kind}"),
    log:
        P.log("rt_csv/{hash}_lib{lib}_{kind}{cap}"),
    benchmark:
        P.benchmark("rt_csv/{hash}_lib{lib}_{kind}{cap}")
    priority: PRIORITY_DATA
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        families=config["covariates"]["families"],
    script:
        "../workflow_scripts/rule_rt_csv.py"


rule test_rows:
    input:
        parquet=P.lib("{hash}", "{lib}"),
        folds=P.folds("{hash}", "{lib}", "{split}"),
        lib_mapping=lib_mapping,
        classes=CLASSES_PARQUET,
        species_mapping=species_mapping,
    output:
        P.test_rows("{hash}", "{lib}", "{split}"),
    log:
        P.log("test_rows/{hash}_lib{lib}_{split}"),
    benchmark:
        P.benchmark("test_rows/{hash}_lib{lib}_{split}")
    priority: PRIORITY_DATA
    conda:
        ENV
    threads: stage_threads
    resources:
        # Bounded: the held-out rows are sorted in chunks of 100,000 rows (0.36 GB at 20 M demo
        # rows); scratch files beside the output take up to ~2x the output's size on disk.
        mem_mb=1000,
        runtime=lambda wc, input: 5 + int(input.size_mb / 500),
    params:
        families=config["covariates"]["families"],
    script:
        "../workflow_scripts/rule_test_rows.py"


rule accounting:
    input:
        accounted_artifacts(config),
    output:
        P.accounting,
    log:
        P.log("accounting"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../workflow_scripts/rule_accounting.py"
