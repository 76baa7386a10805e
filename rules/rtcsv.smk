# Seed step 7: RT production CSVs (the trainers' contract), and every held-out row for evaluation.


rule rt_csv:
    input:
        parquet=f"{LIB}_{{kind}}{{cap}}_chemclass.parquet",
        species_mapping=species_mapping,
    output:
        f"{LIB}_{{kind}}{{cap}}_chemclass_rt_prod.csv",
    log:
        "logs/rt_csv/{hash}_lib{lib}_{kind}{cap}.log",
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
        parquet=f"{LIB}.parquet",
        folds=f"{LIB}_folds.csv",
        lib_mapping=lib_mapping,
        classes=CLASSES_PARQUET,
        species_mapping=species_mapping,
    output:
        f"{LIB}_test_chemclass_rt_prod.parquet",
    log:
        "logs/test_rows/{hash}_lib{lib}.log",
    priority: PRIORITY_DATA
    conda:
        ENV
    threads: data_threads
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
        ACCOUNTING_TABLE,
    log:
        "logs/accounting.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../workflow_scripts/rule_accounting.py"
