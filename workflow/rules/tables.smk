# Stage 7: the grid's manifest, one tidy CSV of every result, and the paper tables
# (Markdown + LaTeX): decoding methods x datasets, benchmark tasks x (original, exits, ACD).


# Local rules run where Snakemake runs (on a cluster: the submit host), never as cluster jobs: the manifest,
# and the seconds-long aggregation jobs (merging shards, tables, figures) that would otherwise wait in the
# queue at the end of the DAG.
localrules:
    manifest,
    merge_generations,
    tables,
    figures,


rule manifest:
    output:
        LAYOUT.manifest,
    log:
        LAYOUT.log("manifest"),
    params:
        manifest=lambda wc: PLAN.manifest(),
    run:
        from multiexit.io import atomic_write_json

        atomic_write_json(output[0], params.manifest)


rule tables:
    input:
        unpack(table_inputs),
    output:
        csv=report(
            LAYOUT.table_csv,
            caption="../report/results_csv.rst",
            category="Tables",
        ),
        generation_md=report(
            LAYOUT.table_generation_md,
            caption="../report/generation_table.rst",
            category="Tables",
        ),
        generation_tex=LAYOUT.table_generation_tex,
        benchmarks_md=report(
            LAYOUT.table_benchmarks_md,
            caption="../report/benchmarks_table.rst",
            category="Tables",
        ),
        benchmarks_tex=LAYOUT.table_benchmarks_tex,
        exits_md=LAYOUT.table_exits_md,
        examples_md=LAYOUT.table_examples_md,
    log:
        LAYOUT.log("tables"),
    benchmark:
        LAYOUT.benchmark("tables")
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
