# Figures for Snakemake's report (`snakemake --report report.html`), each with a caption.


rule plot_coverage:
    input:
        f"{LIB}_species_compounds.csv",
    output:
        report(
            "results/report/{hash}/lib{lib}_coverage.png",
            caption="../report/coverage.rst",
            category="Coverage",
            subcategory="{hash}",
            labels={"lib": "{lib}"},
        ),
    log:
        "logs/plot/coverage_{hash}_lib{lib}.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        caps=config["caps"],
    script:
        "../workflow_scripts/rule_plot.py"


rule plot_funnel:
    input:
        f"{LIB}_cap{{cap}}_chemclass_rt_prod.csv",
    output:
        report(
            "results/report/{hash}/lib{lib}_cap{cap}_funnel.png",
            caption="../report/funnel.rst",
            category="Row accounting",
            subcategory="{hash}",
            labels={"lib": "{lib}", "cap": "{cap}"},
        ),
    log:
        "logs/plot/funnel_{hash}_lib{lib}_cap{cap}.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        artifacts=lambda wc: funnel_artifacts(wc),
    script:
        "../workflow_scripts/rule_plot.py"


rule plot_classes:
    input:
        embeddings=config["embeddings"]["path"],
        classes=CLASSES_PARQUET,
    output:
        report(
            f"results/report/chem_classes_k{config['n_clusters']}.png",
            caption="../report/classes.rst",
            category="Chemistry classes",
        ),
    log:
        "logs/plot/classes.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../workflow_scripts/rule_plot.py"


rule plot_model_quality:
    input:
        "results/rt_prod/{hash}/lib{lib}_cap{cap}/eval/metrics.json",
    output:
        report(
            "results/report/{hash}/lib{lib}_cap{cap}_model_quality.png",
            caption="../report/model_quality.rst",
            category="Model quality",
            subcategory="{hash}",
            labels={"lib": "{lib}", "cap": "{cap}"},
        ),
    log:
        "logs/plot/model_quality_{hash}_lib{lib}_cap{cap}.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        eval_dir=lambda wc, input: os.path.dirname(input[0]),
    script:
        "../workflow_scripts/rule_plot.py"


rule plot_shrinkage:
    input:
        "results/rt_prod/{hash}/lib{lib}_cap{cap}/model.json",
    output:
        report(
            "results/report/{hash}/lib{lib}_cap{cap}_shrinkage.png",
            caption="../report/shrinkage.rst",
            category="Partial pooling",
            subcategory="{hash}",
            labels={"lib": "{lib}", "cap": "{cap}"},
        ),
    log:
        "logs/plot/shrinkage_{hash}_lib{lib}_cap{cap}.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        model_dir=lambda wc, input: os.path.dirname(input[0]),
    script:
        "../workflow_scripts/rule_plot.py"
