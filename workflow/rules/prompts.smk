# Stage 1b: one prompt set per (dataset, generating model's tokenizer), built once and read by
# every generation job of that pair: multiexit.pipeline.layout's prompt_set (+ its .meta.json).
# A dataset with too few usable rows fails here, with the counts, before any model is loaded; the job's
# priority puts it before head training and the other jobs that become ready with it, so it fails first.


rule prompt_set:
    input:
        model=lambda wc: PLAN.base_dir(wc.model),  # its tokenizer cuts the prompts
        refs=lambda wc: PLAN.referenced_model_dirs(PLAN.datasets[wc.dataset]),
        download=LAYOUT.download_report,
    output:
        prompts=LAYOUT.prompt_set,
        meta=LAYOUT.prompt_set_meta,
    log:
        LAYOUT.log("prompt_set"),
    benchmark:
        LAYOUT.benchmark("prompt_set")
    priority: 10
    conda:
        ENV
    threads: stage_threads("prompt_set")
    resources:
        **stage_resources("prompt_set"),
    params:
        script=f"{SCRIPTS}/prepare_prompts.py",
        spec=lambda wc: PLAN.prompt_set_spec(wc.dataset),
        env=PLAN.hf_env(),
    shell:
        "{params.env} python {params.script} --tokenizer {input.model:q} --spec {params.spec:q}"
        " --output {output.prompts:q} > {log:q} 2>&1"
