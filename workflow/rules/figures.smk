# Stage 8: figures (PNG and PDF): metric vs ACD amateur layer, metric vs exit layer (generation
# and lm-eval), per-exit training loss curves, diversity-MAUVE scatter of methods.


def figure_output(name, fmt):
    path = f"{R}/figures/{name}.{fmt}"
    if fmt == "png":
        return report(path, caption=f"../report/{name}.rst", category="Figures")
    return path


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
        f"{R}/logs/figures.log",
    benchmark:
        f"{R}/benchmarks/figures.tsv"
    params:
        formats=",".join(PLAN.config["figures"]["formats"]),
    threads: stage_threads("figures")
    resources:
        **stage_resources("figures"),
    conda:
        ENV
    shell:
        "python {SCRIPTS}/make_figures.py --manifest {input.manifest:q}"
        " --output-dir {R}/figures --formats {params.formats} > {log:q} 2>&1"
