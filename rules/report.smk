# Figures and tables for Snakemake's report (`snakemake --report report.html`), each with a
# caption. A table is an HTML page (the report's viewer shows HTML; a CSV is only a download).


rule plot_coverage:
    input:
        P.coverage("{hash}", "{lib}")[0],
    output:
        report(
            P.figure("coverage", "{hash}", "{lib}"),
            caption="../report/coverage.rst",
            category="Coverage",
            subcategory="{hash}",
            labels={"lib": "{lib}"},
        ),
    log:
        P.log("plot/coverage_{hash}_lib{lib}"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        caps=config["caps"],
    script:
        "../workflow_scripts/rule_plot_coverage.py"


rule plot_funnel:
    input:
        artifacts=funnel_artifacts,
    output:
        report(
            P.figure("funnel", *HLC),
            caption="../report/funnel.rst",
            category="Row accounting",
            subcategory="{hash}",
            labels={"lib": "{lib}", "cap": "{cap}"},
        ),
    log:
        P.log("plot/funnel_{hash}_lib{lib}_cap{cap}"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../workflow_scripts/rule_plot_funnel.py"


rule plot_classes:
    input:
        embeddings=config["embeddings"]["path"],
        classes=CLASSES_PARQUET,
    output:
        report(
            P.figure(f"chem_classes_k{config['n_clusters']}"),
            caption="../report/classes.rst",
            category="Chemistry classes",
        ),
    log:
        P.log("plot/classes"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../workflow_scripts/rule_plot_classes.py"


rule plot_model_quality:
    input:
        P.eval_file(*HLC, split="{split}"),
    output:
        report(
            P.figure("model_quality_{split}", *HLC),
            caption="../report/model_quality.rst",
            category="Model quality",
            subcategory="{hash}",
            labels={"lib": "{lib}", "cap": "{cap}", "split": "{split}"},
        ),
    log:
        P.log("plot/model_quality_{hash}_lib{lib}_cap{cap}_{split}"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        eval_dir=lambda wc, input: os.path.dirname(input[0]),
    script:
        "../workflow_scripts/rule_plot_model_quality.py"


rule plot_shrinkage:
    input:
        P.model_file(*HLC),
    output:
        report(
            P.figure("shrinkage", *HLC),
            caption="../report/shrinkage.rst",
            category="Partial pooling",
            subcategory="{hash}",
            labels={"lib": "{lib}", "cap": "{cap}"},
        ),
    log:
        P.log("plot/shrinkage_{hash}_lib{lib}_cap{cap}"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        model_dir=lambda wc, input: os.path.dirname(input[0]),
    script:
        "../workflow_scripts/rule_plot_shrinkage.py"


# The tables of an export sit beside its figures, labelled lib "all (table)" and no cap: with a
# cap label the report would take cap for a two-valued toggle (one figure's cap, "all") and
# break the subcategory's view.
rule table_metrics:
    input:
        lambda wc: [e["path"] for e in eval_entries(wc)],
    output:
        report(
            P.table("metrics", "{hash}"),
            caption="../report/metrics_table.rst",
            category="Model quality",
            subcategory="{hash}",
            labels={"lib": "all (table)"},
        ),
    log:
        P.log("table/metrics_{hash}"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        entries=eval_entries,
    script:
        "../workflow_scripts/rule_table_metrics.py"


rule table_accounting:
    input:
        P.accounting,
    output:
        report(
            P.table("row_accounting", "{hash}"),
            caption="../report/accounting_table.rst",
            category="Row accounting",
            subcategory="{hash}",
            labels={"lib": "all (table)"},
        ),
    log:
        P.log("table/row_accounting_{hash}"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../workflow_scripts/rule_table_accounting.py"
