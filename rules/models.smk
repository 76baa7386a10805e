# Stages train and evaluate: RT models (ridge and partial pooling) from the RT production CSVs,
# and their held-out evaluation, one per split (trained on the split's train-fold capped rows,
# scored on every row of its test fold).


rule train:
    input:
        csv=P.rt_csv(*HLC),
        embeddings=config["embeddings"]["path"],
    output:
        # every file train writes (each .parquet with its sidecars, rtprep.core.artifacts)
        manifest=P.model_file(*HLC),
        models=[P.model_file(*HLC, f"{k}/{f}".lstrip("/")) for k, f in TRAINED_FILES],
    log:
        P.log("train/{hash}_lib{lib}_cap{cap}"),
    benchmark:
        P.benchmark("train/{hash}_lib{lib}_cap{cap}")
    priority: PRIORITY_MODEL
    conda:
        ENV
    threads: model_threads
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        out=lambda wc, output: os.path.dirname(output.manifest),
        model=MODEL_OPTIONS,
        families=config["covariates"]["families"],
    script:
        "../workflow_scripts/rule_train.py"


rule evaluate:
    input:
        unpack(eval_truth),
        train_csv=P.rt_csv(*HLC, kind=train_kind("{split}")),
        test_rows=P.test_rows("{hash}", "{lib}", "{split}"),
        embeddings=config["embeddings"]["path"],
    output:
        metrics=P.eval_file(*HLC, split="{split}"),
        tables=[P.eval_file(*HLC, split="{split}", name=f) for f in EVAL_FILES[1:]],
        truth=(
            [P.eval_file(*HLC, split="{split}", name=f) for f in EVAL_TRUTH_FILES]
            if TRUTH
            else []
        ),
        model=directory(P.eval_file(*HLC, split="{split}", name=EVAL_MODEL_DIR)),
    log:
        P.log("evaluate/{hash}_lib{lib}_cap{cap}_{split}"),
    benchmark:
        P.benchmark("evaluate/{hash}_lib{lib}_cap{cap}_{split}")
    priority: PRIORITY_MODEL
    conda:
        ENV
    threads: model_threads
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        out=lambda wc, output: os.path.dirname(output.metrics),
        model=MODEL_OPTIONS,
        families=config["covariates"]["families"],
    script:
        "../workflow_scripts/rule_evaluate.py"
