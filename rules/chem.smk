# Seed steps 5-6: compound classes from chemistry embeddings; attach CHEM_ID + class.
# With embeddings.source rdkit or chemberta, the embeddings are first built from SMILES.

if config["embeddings"]["source"] != "file":

    rule embeddings:
        input:
            smiles=config["embeddings"]["smiles"],
            projection=embeddings_projection_input(),
        output:
            parquet=config["embeddings"]["path"],
        log:
            P.log("embeddings"),
        conda:
            ENV
        threads: 2
        resources:
            mem_mb=4000,
            runtime=60,
        params:
            source=config["embeddings"]["source"],
            n_components=config["embeddings"]["n_components"],
            rdkit=config["embeddings"]["rdkit"],
            model_dir=config["embeddings"].get("model_dir"),
            batch_size=config["embeddings"]["batch_size"],
        script:
            "../workflow_scripts/rule_embeddings.py"


rule chem_classes:
    input:
        config["embeddings"]["path"],
    output:
        parquet=CLASSES_PARQUET,
        csv=CLASSES_CSV,
    log:
        P.log(f"chem_classes_k{config['n_clusters']}"),
    priority: PRIORITY_DATA
    conda:
        ENV
    threads: data_threads
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
    priority: PRIORITY_DATA
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    script:
        "../workflow_scripts/rule_attach.py"
