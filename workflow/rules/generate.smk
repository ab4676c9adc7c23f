# Stage 4: open-ended generation, one job per (model, decoding setting, dataset, shard), each
# given one GenerateSettings spec. Output paths: multiexit.pipeline.layout (generation_shard, ...).


rule generate:
    input:
        unpack(generation_inputs),
    output:
        generations=LAYOUT.generation_shard,
        meta=LAYOUT.generation_shard_meta,
    log:
        LAYOUT.log("generate"),
    benchmark:
        LAYOUT.benchmark("generate")
    conda:
        ENV
    threads: stage_threads("generate")
    resources:
        **stage_resources("generate"),
    params:
        script=f"{SCRIPTS}/generate.py",
        spec=lambda wc: PLAN.generate_spec(wc.model, wc.dataset, wc.label, wc.shard),
        env=PLAN.hf_env(),
    shell:
        "{params.env} python {params.script} --model {input.model:q} --spec {params.spec:q}"
        " --threads {threads} --no-progress --output {output.generations:q}"
        " > {log:q} 2>&1"


rule merge_generations:
    input:
        lambda wc: [
            PLAN.generation_shard(wc.model, wc.dataset, wc.label, i)
            for i in range(PLAN.shards(wc.dataset))
        ],
    output:
        generations=LAYOUT.generations,
        meta=LAYOUT.generations_meta,
    log:
        LAYOUT.log("merge_generations"),
    benchmark:
        LAYOUT.benchmark("merge_generations")
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
