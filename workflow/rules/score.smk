# Stage 5: metrics of one (model, setting, dataset) over all its shards:
# (the merged shards, or the single shard), diversity (both conventions), MAUVE, coherence, lengths -> results/<model>/scores/<dataset>/<label>.json


def score_inputs(wc):
    return {
        "generations": PLAN.score_input(wc.model, wc.dataset, wc.label),
        "refs": PLAN.referenced_model_dirs(PLAN.config["metrics"]),
    }


rule score:
    input:
        unpack(score_inputs),
    output:
        f"{R}/{{model}}/scores/{{dataset}}/{{label}}.json",
    log:
        f"{R}/logs/score/{{model}}/{{dataset}}/{{label}}.log",
    benchmark:
        f"{R}/benchmarks/score/{{model}}/{{dataset}}/{{label}}.tsv"
    params:
        settings=lambda wc: to_json(PLAN.score_settings(wc.model, wc.dataset)),
    threads: stage_threads("score")
    resources:
        **stage_resources("score"),
    conda:
        ENV
    shell:
        "python {SCRIPTS}/score.py --generations {input.generations:q}"
        " --settings {params.settings:q} --threads {threads}"
        " --output {output:q} > {log:q} 2>&1"
