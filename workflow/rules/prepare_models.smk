# Stage 1: make every configured model a local HF folder at results/<model>/base.
# Hub names are downloaded here (in the job, never at planning time), `package:<name>` models
# are converted once from their GGUF, local folders are linked. The job checks num_layers.


rule prepare_model:
    input:
        download=LAYOUT.download_report,
    output:
        directory(LAYOUT.base),
    log:
        LAYOUT.log("prepare_model"),
    benchmark:
        LAYOUT.benchmark("prepare_model")
    conda:
        ENV
    threads: stage_threads("prepare_model")
    resources:
        **stage_resources("prepare_model"),
    params:
        script=f"{SCRIPTS}/prepare_model.py",
        spec=lambda wc: PLAN.prepare_spec(wc.model),
        env=PLAN.hf_env(),
    shell:
        "{params.env} python {params.script} --spec {params.spec:q} --output {output:q} > {log:q} 2>&1"
