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
    conda:
        ENV
    threads: stage_threads("tables")
    resources:
        **stage_resources("tables"),
    params:
        outdir=lambda wc, output: os.path.dirname(output.csv),
        script=f"{SCRIPTS}/make_tables.py",
    shell:
        "python {params.script} --manifest {input.manifest:q}"
        " --output-dir {params.outdir:q} > {log:q} 2>&1"
