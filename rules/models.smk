# Stage 8: RT models (ridge and partial pooling) from the RT production CSVs, and their held-out
# evaluation (trained on the train folds' capped rows, scored on every test-fold row).


rule train:
    input:
        csv=f"{LIB}_cap{{cap}}_chemclass_rt_prod.csv",
        embeddings=config["embeddings"]["path"],
    output:
        "results/rt_prod/{hash}/lib{lib}_cap{cap}/model.json",
    log:
        "logs/train/{hash}_lib{lib}_cap{cap}.log",
    benchmark:
        "benchmarks/runs/train/{hash}_lib{lib}_cap{cap}.tsv"
    priority: PRIORITY_MODEL
    conda:
        ENV
    threads: model_threads
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        out=lambda wc, output: os.path.dirname(output[0]),
        model=MODEL_OPTIONS,
        families=config["covariates"]["families"],
    script:
        "../workflow_scripts/rule_train.py"


rule evaluate:
    input:
        unpack(demo_truth),
        train_csv=f"{LIB}_train_cap{{cap}}_chemclass_rt_prod.csv",
        test_rows=f"{LIB}_test_chemclass_rt_prod.parquet",
        embeddings=config["embeddings"]["path"],
    output:
        "results/rt_prod/{hash}/lib{lib}_cap{cap}/eval/metrics.json",
    log:
        "logs/evaluate/{hash}_lib{lib}_cap{cap}.log",
    priority: PRIORITY_MODEL
    conda:
        ENV
    threads: model_threads
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        out=lambda wc, output: os.path.dirname(output[0]),
        model=MODEL_OPTIONS,
        families=config["covariates"]["families"],
    script:
        "../workflow_scripts/rule_evaluate.py"
