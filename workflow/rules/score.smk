# Stage 5: metrics of one (model, setting, dataset) over all its shards:
# (the merged shards, or the single shard), diversity (both conventions), MAUVE, coherence, lengths -> results/<model>/scores/<dataset>/<label>.json


rule score:
    input:
        unpack(score_inputs),
    output:
        f"{R}/{{model}}/scores/{{dataset}}/{{label}}.json",
    log:
        f"{R}/logs/score/{{model}}/{{dataset}}/{{label}}.log",
    benchmark:
        f"{R}/benchmarks/score/{{model}}/{{dataset}}/{{label}}.tsv"
    conda:
        ENV
    threads: stage_threads("score")
    resources:
        **stage_resources("score"),
    params:
        script=f"{SCRIPTS}/score.py",
        settings=lambda wc: to_json(PLAN.score_settings(wc.model, wc.dataset)),
    shell:
        "python {params.script} --generations {input.generations:q}"
        " --settings {params.settings:q} --threads {threads}"
        " --output {output:q} > {log:q} 2>&1"
