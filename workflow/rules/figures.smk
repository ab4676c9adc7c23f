# Stage 8: figures (PNG and PDF): metric vs ACD amateur layer, metric vs exit layer (generation
# and lm-eval), per-exit training loss curves, diversity-MAUVE scatter of methods.


rule figures:
    input:
        unpack(table_inputs),
    output:
        [
            figure_output(name, fmt)
            for name in PLAN.FIGURES
            for fmt in PLAN.config["figures"]["formats"]
        ],
    log:
        LAYOUT.log("figures"),
    benchmark:
        LAYOUT.benchmark("figures")
    conda:
        ENV
    threads: stage_threads("figures")
    resources:
        **stage_resources("figures"),
    params:
        outdir=lambda wc, output: os.path.dirname(output[0]),
        script=f"{SCRIPTS}/make_figures.py",
        formats=",".join(PLAN.config["figures"]["formats"]),
    shell:
        "python {params.script} --manifest {input.manifest:q}"
        " --output-dir {params.outdir:q} --formats {params.formats} > {log:q} 2>&1"
