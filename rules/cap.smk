# Stage cap (rows per species x compound pair) and the held-out folds of whole sample sets,
# one set of folds per split of eval.splits (random sample sets, or the latest worksheets).


rule folds:
    input:
        P.lib("{hash}", "{lib}"),
    output:
        P.folds("{hash}", "{lib}", "{split}"),
    log:
        P.log("folds/{hash}_lib{lib}_{split}"),
    priority: PRIORITY_DATA
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        test_fraction=config["eval"]["test_fraction"],
        # each split's params only: a new fold_seed redraws the random split alone, a new
        # time_column the time split alone
        fold_seed=lambda wc: config["fold_seed"] if wc.split == "random" else None,
        time_column=lambda wc: (
            config["eval"]["time_column"] if wc.split == "time" else None
        ),
    script:
        "../workflow_scripts/rule_folds.py"


rule cap:
    input:
        P.lib("{hash}", "{lib}"),
    output:
        P.capped(*HLC),
    log:
        P.log("cap/{hash}_lib{lib}_cap{cap}"),
    benchmark:
        P.benchmark("cap/{hash}_lib{lib}_cap{cap}")
    priority: PRIORITY_DATA
    conda:
        ENV
    threads: stage_threads
    resources:
        # pass 1's candidates (up to every row's key and hash at cap 100) and one range of
        # kept rows: 1.1 GB at cap 100 of a 33 M-row lib file of 348 MB
        mem_mb=lambda wc, input: min(8000, 1000 + int(3 * input.size_mb)),
        runtime=lambda wc, input: 5 + int(input.size_mb / 500),
    params:
        cap=lambda wc: int(wc.cap),
        seed=config["cap_seed"],
    script:
        "../workflow_scripts/rule_cap.py"


rule cap_train:
    input:
        parquet=P.lib("{hash}", "{lib}"),
        folds=P.folds("{hash}", "{lib}", "{split}"),
    output:
        P.capped(*HLC, kind=train_kind("{split}")),
    log:
        P.log("cap/{hash}_lib{lib}_{split}_train_cap{cap}"),
    priority: PRIORITY_DATA
    conda:
        ENV
    threads: stage_threads
    resources:
        mem_mb=1000,
        runtime=lambda wc, input: 5 + int(input.size_mb / 500),
    params:
        cap=lambda wc: int(wc.cap),
        seed=config["cap_seed"],
    script:
        "../workflow_scripts/rule_cap.py"
