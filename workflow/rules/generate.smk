# Stage 4: open-ended generation, one job per (model, decoding setting, dataset, shard).
# results/<model>/generations/<dataset>/<setting label>/shard-<i>.jsonl (+ .meta.json sidecar)


rule generate:
    input:
        unpack(generation_inputs),
    output:
        generations=f"{R}/{{model}}/generations/{{dataset}}/{{label}}/shard-{{shard}}.jsonl",
        meta=f"{R}/{{model}}/generations/{{dataset}}/{{label}}/shard-{{shard}}.meta.json",
    log:
        f"{R}/logs/generate/{{model}}/{{dataset}}/{{label}}/shard-{{shard}}.log",
    benchmark:
        f"{R}/benchmarks/generate/{{model}}/{{dataset}}/{{label}}/shard-{{shard}}.tsv"
    conda:
        ENV
    threads: stage_threads("generate")
    resources:
        **stage_resources("generate"),
    params:
        script=f"{SCRIPTS}/generate.py",
        method=lambda wc: PLAN.setting(wc.model, wc.label).method,
        decoding=lambda wc: to_json(
            PLAN.resolve_refs(PLAN.setting(wc.model, wc.label).params)
        ),
        dataset=lambda wc: to_json(PLAN.dataset_request(wc.dataset)),
        seed=lambda wc: PLAN.setting(wc.model, wc.label).seed,
        num_shards=lambda wc: PLAN.datasets[wc.dataset]["shards"],
        new_tokens=lambda wc: PLAN.datasets[wc.dataset]["new_tokens"],
        batch_size=batch_size("generate"),
        device=config["device"],
    shell:
        "python {params.script} --model {input.model:q} --method {params.method}"
        " --params {params.decoding:q} --dataset {params.dataset:q}"
        " --shard {wildcards.shard} --num-shards {params.num_shards}"
        " --batch-size {params.batch_size} --seed {params.seed}"
        " --max-new-tokens {params.new_tokens} --device {params.device}"
        " --threads {threads} --no-progress --output {output.generations:q}"
        " > {log:q} 2>&1"


rule merge_generations:
    input:
        lambda wc: [
            PLAN.generation_shard(wc.model, wc.dataset, wc.label, i)
            for i in range(PLAN.datasets[wc.dataset]["shards"])
        ],
    output:
        generations=f"{R}/{{model}}/generations/{{dataset}}/{{label}}/all.jsonl",
        meta=f"{R}/{{model}}/generations/{{dataset}}/{{label}}/all.meta.json",
    log:
        f"{R}/logs/merge_generations/{{model}}/{{dataset}}/{{label}}.log",
    benchmark:
        f"{R}/benchmarks/merge_generations/{{model}}/{{dataset}}/{{label}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **stage_resources("tables"),
    params:
        script=f"{SCRIPTS}/generate.py",
    shell:
        "python {params.script} --merge {input:q} --output {output.generations:q}"
        " > {log:q} 2>&1"
