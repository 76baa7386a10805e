# The embedded demo export: written only under demo.dir, and only in the DAG when data_dir is
# inside it (never part of a real run).
if DEMO:

    localrules:
        demo,

    rule demo:
        output:
            manifest=f"{DEMO_DIR}/manifest.json",
            embeddings=f"{DEMO_DIR}/resources/metabolites/embeddings_chemberta_pca20.parquet",
            lib_mappings=demo_lib_mappings(),
            species_mappings=demo_species_mappings(),
            truth=DEMO_TRUTH,
            truth_tables=[
                f"{DEMO_DIR}/truth/{f}"
                for f in DEMO_TRUTH_FILES
                if f != "truth_peaks.parquet"
            ],
            exports=[directory(d) for d in demo_export_dirs()],
        log:
            P.log("demo"),
        priority: PRIORITY_DATA
        conda:
            ENV
        threads: 1
        resources:
            mem_mb=2000,
            runtime=30,
        params:
            out=lambda wc, output: os.path.dirname(output.manifest),
            rows=config["demo"]["rows"],
            seed=config["demo"]["seed"],
            libs=config["demo"]["libs"],
        script:
            "../workflow_scripts/rule_demo.py"
