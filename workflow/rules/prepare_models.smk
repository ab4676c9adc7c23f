# Stage 1: make every configured model a local HF folder at results/<model>/base.
# Hub names are downloaded here (in the job, never at planning time), `package:<name>` models
# are converted once from their GGUF, local folders are linked. The job checks num_layers.


rule prepare_model:
    output:
        directory(f"{R}/{{model}}/base"),
    log:
        f"{R}/logs/prepare_model/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/prepare_model/{{model}}.tsv"
    conda:
        ENV
    threads: stage_threads("prepare_model")
    resources:
        **stage_resources("prepare_model"),
    params:
        script=f"{SCRIPTS}/prepare_model.py",
        source=lambda wc: PLAN.models[wc.model]["source"],
        num_layers=lambda wc: PLAN.models[wc.model]["num_layers"],
        exits=lambda wc: (
            f"--exits {shlex.quote(';'.join(map(str, PLAN.models[wc.model]['exits'])))}"
            if PLAN.models[wc.model]["exits"]
            else ""
        ),
        checkpoint=lambda wc: (
            "--multi-exit-checkpoint"
            if PLAN.models[wc.model]["multi_exit_checkpoint"]
            else ""
        ),
    shell:
        "python {params.script} --source {params.source:q} --output {output:q}"
        " --num-layers {params.num_layers} {params.exits} {params.checkpoint}"
        " > {log:q} 2>&1"
