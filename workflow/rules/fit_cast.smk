# Stage 3: cast matrices (Din et al.): least-squares maps from each configured layer's final-normed
# state to the top layer's state, fitted with scripts/fit_cast.py on the trained checkpoint (or the
# base model) and saved into results/<model>/cast (read with SHARED_PROJECTION_CAST_OUTPUTS).
# Only for models with a `cast:` block; its layers and options are one FitCastSettings spec.


rule fit_cast:
    input:
        model=lambda wc: PLAN.cast_input(wc.model),
        refs=lambda wc: PLAN.referenced_model_dirs(PLAN.models[wc.model]["cast"]),
        download=LAYOUT.download_report,
    output:
        checkpoint=directory(LAYOUT.cast),
        metrics=LAYOUT.cast_report,
    log:
        LAYOUT.log("fit_cast"),
    benchmark:
        LAYOUT.benchmark("fit_cast")
    conda:
        ENV
    threads: stage_threads("fit_cast")
    resources:
        **stage_resources("fit_cast"),
    params:
        script=f"{SCRIPTS}/fit_cast.py",
        spec=lambda wc: PLAN.cast_spec(wc.model),
        env=PLAN.hf_env(),
    shell:
        "{params.env} python {params.script} --model {input.model:q} --spec {params.spec:q}"
        " --output-dir {output.checkpoint:q} --metrics {output.metrics:q} > {log:q} 2>&1"
