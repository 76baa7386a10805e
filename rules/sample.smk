# Seed step 4 (cap per species x compound pair) and the held-out folds of whole sample sets.


rule folds:
    input:
        f"{LIB}.parquet",
    output:
        f"{LIB}_folds.csv",
    log:
        "logs/folds/{hash}_lib{lib}.log",
    priority: PRIORITY_DATA
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        test_fraction=config["eval"]["test_fraction"],
        fold_seed=config["fold_seed"],
    script:
        "../workflow_scripts/rule_folds.py"


rule cap:
    input:
        f"{LIB}.parquet",
    output:
        f"{LIB}_cap{{cap}}.parquet",
    log:
        "logs/cap/{hash}_lib{lib}_cap{cap}.log",
    benchmark:
        "benchmarks/runs/cap/{hash}_lib{lib}_cap{cap}.tsv"
    priority: PRIORITY_DATA
    conda:
        ENV
    threads: data_threads
    resources:
        mem_mb=1000,
        runtime=lambda wc, input: 5 + int(input.size_mb / 500),
    params:
        cap=lambda wc: int(wc.cap),
        seed=config["cap_seed"],
    script:
        "../workflow_scripts/rule_cap.py"


rule cap_train:
    input:
        parquet=f"{LIB}.parquet",
        folds=f"{LIB}_folds.csv",
    output:
        f"{LIB}_train_cap{{cap}}.parquet",
    log:
        "logs/cap/{hash}_lib{lib}_train_cap{cap}.log",
    priority: PRIORITY_DATA
    conda:
        ENV
    threads: data_threads
    resources:
        mem_mb=1000,
        runtime=lambda wc, input: 5 + int(input.size_mb / 500),
    params:
        cap=lambda wc: int(wc.cap),
        seed=config["cap_seed"],
    script:
        "../workflow_scripts/rule_cap.py"
