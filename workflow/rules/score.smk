# Stage 5: metrics of one (model, setting, dataset) over all its shards (the merged shards, or the
# single shard): diversity (both conventions), MAUVE, coherence, lengths; one ScoreSettings spec.


rule score:
    input:
        unpack(score_inputs),
    output:
        LAYOUT.scores,
    log:
        LAYOUT.log("score"),
    benchmark:
        LAYOUT.benchmark("score")
    conda:
        ENV
    threads: stage_threads("score")
    resources:
        **stage_resources("score"),
    params:
        script=f"{SCRIPTS}/score.py",
        spec=PLAN.score_spec(),
        env=PLAN.hf_env(),
    shell:
        "{params.env} python {params.script} --generations {input.generations:q}"
        " --spec {params.spec:q} --threads {threads}"
        " --output {output:q} > {log:q} 2>&1"
