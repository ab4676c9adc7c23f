# Stage 7: the grid's manifest, one tidy CSV of every result, and the paper tables
# (Markdown + LaTeX): decoding methods x datasets, benchmark tasks x (original, exits, ACD).


localrules:
    manifest,


rule manifest:
    output:
        f"{R}/manifest.json",
    log:
        f"{R}/logs/manifest.log",
    params:
        manifest=lambda wc: PLAN.manifest(),
    run:
        from multiexit.pipeline.grid import write_json_atomic

        write_json_atomic(output[0], params.manifest)


def table_inputs(wc):
    return {
        "manifest": f"{R}/manifest.json",
        "scores": [row["scores"] for row in PLAN.manifest()["generations"]],
        "lm_eval": [row["path"] for row in PLAN.manifest()["lm_eval"]],
        "training": [PLAN.training_report(m) for m in PLAN.training_models()],
        "history": [PLAN.training_history(m) for m in PLAN.training_models()],
    }


rule tables:
    input:
        unpack(table_inputs),
    output:
        csv=report(
            PLAN.table_paths()["csv"],
            caption="../report/results_csv.rst",
            category="Tables",
        ),
        generation_md=report(
            PLAN.table_paths()["generation_md"],
            caption="../report/generation_table.rst",
            category="Tables",
        ),
        generation_tex=PLAN.table_paths()["generation_tex"],
        benchmarks_md=report(
            PLAN.table_paths()["benchmarks_md"],
            caption="../report/benchmarks_table.rst",
            category="Tables",
        ),
        benchmarks_tex=PLAN.table_paths()["benchmarks_tex"],
    log:
        f"{R}/logs/tables.log",
    benchmark:
        f"{R}/benchmarks/tables.tsv"
    threads: stage_threads("tables")
    resources:
        **stage_resources("tables"),
    conda:
        ENV
    shell:
        "python {SCRIPTS}/make_tables.py --manifest {input.manifest:q}"
        " --output-dir {R}/tables > {log:q} 2>&1"
