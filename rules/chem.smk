# Stages embed (with embeddings.source rdkit or chemberta: the embeddings from SMILES),
# chem_classes (compound classes from the embeddings) and attach (CHEM_ID + class per row).

if config["embeddings"]["source"] != "file":

    rule embed:
        input:
            smiles=config["embeddings"]["smiles"],
            projection=embeddings_projection_input(),
        output:
            parquet=config["embeddings"]["path"],
        log:
            P.log("embed"),
        conda:
            ENV
        threads: 2
        resources:
            mem_mb=4000,
            runtime=60,
        params:
            embeddings=config["embeddings"],
        script:
            "../workflow_scripts/rule_embed.py"


rule chem_classes:
    input:
        config["embeddings"]["path"],
    output:
        parquet=CLASSES_PARQUET,
        csv=CLASSES_CSV,
    log:
        P.log(f"chem_classes/k{config['n_clusters']}"),
    priority: PRIORITY_DATA
    conda:
        ENV
    threads: stage_threads
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        n_clusters=config["n_clusters"],
        seed=config["kmeans_seed"],
    script:
        "../workflow_scripts/rule_chem_classes.py"


rule attach:
    input:
        parquet=P.capped(*HLC, kind="{kind}"),
        lib_mapping=lib_mapping,
        classes=CLASSES_PARQUET,
    output:
        P.chemclass(*HLC, kind="{kind}"),
    log:
        P.log("attach/{hash}_lib{lib}_{kind}{cap}"),
    benchmark:
        P.benchmark("attach/{hash}_lib{lib}_{kind}{cap}")
    priority: PRIORITY_DATA
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    script:
        "../workflow_scripts/rule_attach.py"
