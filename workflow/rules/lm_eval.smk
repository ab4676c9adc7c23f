# Stage 6: lm-eval benchmarks (scripts/lm_eval_run.py, model multi_exit) of each model's original
# head, single exits and ACD pairs: results/<model>/lm_eval/<task>/<variant>.json, where variant
# is original, exit-<layer> or acd-<upper>-<lower>. Local LAMBADA-style tasks without a data file
# are built first from real news text by scripts/make_lambada_local.py (a LambadaBuildSettings spec).


rule build_lm_eval_data:
    input:
        download=LAYOUT.download_report,
    output:
        LAYOUT.lm_eval_data,
    log:
        LAYOUT.log("build_lm_eval_data"),
    benchmark:
        LAYOUT.benchmark("build_lm_eval_data")
    conda:
        ENV
    threads: 1
    resources:
        **stage_resources("tables"),
    params:
        script=f"{SCRIPTS}/make_lambada_local.py",
        spec=lambda wc: PLAN.lambada_spec(wc.task),
        env=PLAN.hf_env(),
    shell:
        "{params.env} python {params.script} --output {output:q} --spec {params.spec:q} > {log:q} 2>&1"


rule lm_eval:
    input:
        model=lambda wc: PLAN.model_dir(wc.model),
        data=lambda wc: PLAN.lm_eval_task_inputs(wc.task),
        download=LAYOUT.download_report,
    output:
        LAYOUT.lm_eval,
    log:
        LAYOUT.log("lm_eval"),
    benchmark:
        LAYOUT.benchmark("lm_eval")
    conda:
        ENV
    threads: stage_threads("lm_eval")
    resources:
        **stage_resources("lm_eval"),
    params:
        script=f"{SCRIPTS}/lm_eval_run.py",
        spec=lambda wc: PLAN.lm_eval_spec(wc.model, wc.task, wc.variant),
        env=PLAN.hf_env(),
    shell:
        "{params.env} python {params.script} --spec {params.spec:q} --output {output:q}"
        " --threads {threads} > {log:q} 2>&1"
