# Stage 6: lm-eval benchmarks (scripts/lm_eval_run.py, model multi_exit) of each model's original
# head, single exits and ACD pairs: results/<model>/lm_eval/<task>/<variant>.json, where variant
# is original, exit-<layer> or acd-<upper>-<lower>. Local LAMBADA-style tasks without a data file
# are built first from real news text by scripts/make_lambada_local.py.


rule build_lm_eval_data:
    output:
        f"{R}/lm_eval_data/{{task}}.jsonl",
    log:
        f"{R}/logs/build_lm_eval_data/{{task}}.log",
    benchmark:
        f"{R}/benchmarks/build_lm_eval_data/{{task}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **stage_resources("tables"),
    params:
        script=f"{SCRIPTS}/make_lambada_local.py",
        options=lambda wc: " ".join(
            shlex.quote(part)
            for part in cli_options(
                PLAN.resolve_refs(PLAN.lm_eval_task(wc.task).get("build") or {})
            )
        ),
    shell:
        "python {params.script} --output {output:q} {params.options}" " > {log:q} 2>&1"


rule lm_eval:
    input:
        model=lambda wc: PLAN.model_dir(wc.model),
        data=lambda wc: PLAN.lm_eval_task_inputs(wc.task),
    output:
        f"{R}/{{model}}/lm_eval/{{task}}/{{variant}}.json",
    log:
        f"{R}/logs/lm_eval/{{model}}/{{task}}/{{variant}}.log",
    benchmark:
        f"{R}/benchmarks/lm_eval/{{model}}/{{task}}/{{variant}}.tsv"
    conda:
        ENV
    threads: stage_threads("lm_eval")
    resources:
        **stage_resources("lm_eval"),
    params:
        script=f"{SCRIPTS}/lm_eval_run.py",
        model_args=lambda wc: PLAN.lm_eval_model_args(wc.model, wc.task, wc.variant),
        task=lambda wc: PLAN.lm_eval_task_spec(wc.task),
        options=PLAN.lm_eval_options(),
        seed=config["seeds"][0],
    shell:
        "python {params.script} --model-args {params.model_args:q}"
        " --tasks {params.task:q} --output {output:q} {params.options}"
        " --seed {params.seed} --threads {threads} > {log:q} 2>&1"
