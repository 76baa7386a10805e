# Stages merge (an export's shards), split (by lib) and coverage (species x compound).


rule merge:
    input:
        export_inputs,
    output:
        P.merged("{hash}") if config["keep_merged"] else temp(P.merged("{hash}")),
    log:
        P.log("merge/{hash}"),
    benchmark:
        P.benchmark("merge/{hash}")
    priority: PRIORITY_DATA
    conda:
        ENV
    threads: data_threads
    resources:
        mem_mb=lambda wc, input: 1000 + int(0.5 * input.size_mb),
        runtime=lambda wc, input: 5 + int(input.size_mb / 100),
    params:
        export=lambda wc: P.export(wc.hash),
        merge=config["merge"],
    script:
        "../workflow_scripts/rule_merge.py"


rule split:
    input:
        P.merged("{hash}"),
    output:
        P.lib("{hash}", "{lib}"),
    log:
        P.log("split/{hash}_lib{lib}"),
    benchmark:
        P.benchmark("split/{hash}_lib{lib}")
    priority: PRIORITY_DATA
    conda:
        ENV
    threads: stage_threads
    resources:
        mem_mb=1000,
        runtime=lambda wc, input: 5 + int(input.size_mb / 250),
    params:
        rt_range=lambda wc: rt_range(config, wc.lib),
    script:
        "../workflow_scripts/rule_split.py"


rule coverage:
    input:
        P.lib("{hash}", "{lib}"),
    output:
        csv=P.coverage("{hash}", "{lib}")[0],
        summary=P.coverage("{hash}", "{lib}")[1],
    log:
        P.log("coverage/{hash}_lib{lib}"),
    conda:
        ENV
    threads: stage_threads
    resources:
        mem_mb=500,
        runtime=5,
    params:
        caps=config["coverage_caps"],
    script:
        "../workflow_scripts/rule_coverage.py"
