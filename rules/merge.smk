# Seed steps 1-3: merge an export's shards, split by lib, species x compound coverage.


rule merge:
    input:
        export_inputs,
    output:
        f"{MERGED}.parquet" if config["keep_merged"] else temp(f"{MERGED}.parquet"),
    log:
        "logs/merge/{hash}.log",
    benchmark:
        "benchmarks/runs/merge/{hash}.tsv"
    priority: PRIORITY_DATA
    conda:
        ENV
    threads: data_threads
    resources:
        mem_mb=lambda wc, input: 1000 + int(0.5 * input.size_mb),
        runtime=lambda wc, input: 5 + int(input.size_mb / 100),
    params:
        export=lambda wc: f"{DATA}/{wc.hash}",
        merge=config["merge"],
    script:
        "../workflow_scripts/rule_merge.py"


rule split:
    input:
        f"{MERGED}.parquet",
    output:
        f"{LIB}.parquet",
    log:
        "logs/split/{hash}_lib{lib}.log",
    benchmark:
        "benchmarks/runs/split/{hash}_lib{lib}.tsv"
    priority: PRIORITY_DATA
    conda:
        ENV
    threads: data_threads
    resources:
        mem_mb=1000,
        runtime=lambda wc, input: 5 + int(input.size_mb / 250),
    params:
        rt_range=lambda wc: rt_range(config, wc.lib),
    script:
        "../workflow_scripts/rule_split.py"


rule coverage:
    input:
        f"{LIB}.parquet",
    output:
        csv=f"{LIB}_species_compounds.csv",
        summary=f"{LIB}_species_compounds_summary.txt",
    log:
        "logs/coverage/{hash}_lib{lib}.log",
    conda:
        ENV
    threads: data_threads
    resources:
        mem_mb=500,
        runtime=5,
    params:
        caps=config["coverage_caps"],
    script:
        "../workflow_scripts/rule_coverage.py"
