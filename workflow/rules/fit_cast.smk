# Stage 3: cast matrices (Din et al.): least-squares maps from each configured layer's final-normed
# state to the top layer's state, fitted with scripts/fit_cast.py on the trained checkpoint (or the
# base model) and saved into results/<model>/cast (read with SHARED_PROJECTION_CAST_OUTPUTS).
# Only for models with a `cast:` block; options come from cast.options (fit_cast.py flags).


rule fit_cast:
    input:
        model=lambda wc: PLAN.cast_input(wc.model),
        refs=lambda wc: PLAN.referenced_model_dirs(PLAN.models[wc.model]["cast"]),
    output:
        checkpoint=directory(f"{R}/{{model}}/cast"),
        metrics=f"{R}/{{model}}/cast-report/cast_fit.json",
    log:
        f"{R}/logs/fit_cast/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/fit_cast/{{model}}.tsv"
    conda:
        ENV
    threads: stage_threads("fit_cast")
    resources:
        **stage_resources("fit_cast"),
    params:
        script=f"{SCRIPTS}/fit_cast.py",
        layers=lambda wc: ",".join(map(str, PLAN.cast_layers(wc.model))),
        options=lambda wc: PLAN.cast_options(wc.model),
    shell:
        "python {params.script} --model {input.model:q} --layers {params.layers}"
        " --output-dir {output.checkpoint:q} --metrics {output.metrics:q}"
        " {params.options} > {log:q} 2>&1"
