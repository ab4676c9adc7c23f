# Stage 1b: one prompt set per (dataset, generating model's tokenizer), built once and read by
# every generation job of that pair: results/prompts/<dataset>/<model>.jsonl (+ .meta.json).
# A dataset with too few usable rows fails here, with the counts, before any model is loaded.
#
# Plan API used (to be added to multiexit.pipeline.grid.Plan):
#   PLAN.prompt_set_path(dataset, model) -> f"{results}/prompts/{dataset}/{model}.jsonl"
#   PLAN.prompt_set_jobs()               -> [(dataset, model)] of every generation pair
#   PLAN.dataset_request(dataset)        -> the DatasetRequest dict (exists)
#   PLAN.download_report()               -> see download.smk
# The generate rule then takes  prompts=PLAN.prompt_set_path(wc.dataset, wc.model)  as an input
# and passes  --prompts {input.prompts:q}  instead of --dataset.


rule prompt_set:
    input:
        model=lambda wc: PLAN.base_dir(wc.model),  # its tokenizer cuts the prompts
        download=PLAN.download_report(),
    output:
        prompts=f"{R}/prompts/{{dataset}}/{{model}}.jsonl",
        meta=f"{R}/prompts/{{dataset}}/{{model}}.meta.json",
    log:
        f"{R}/logs/prompt_set/{{dataset}}/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/prompt_set/{{dataset}}/{{model}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **stage_resources("prompt_set"),
    params:
        script=f"{SCRIPTS}/prepare_prompts.py",
        spec=lambda wc: to_json(PLAN.dataset_request(wc.dataset)),
        env=HF_ENV,
    shell:
        "{params.env} python {params.script} --tokenizer {input.model:q} --spec {params.spec:q}"
        " --output {output.prompts:q} > {log:q} 2>&1"
