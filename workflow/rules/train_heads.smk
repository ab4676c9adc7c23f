# Stage 2: train one linear exit head per configured layer (base frozen by default) with
# scripts/train_heads.py -> an HF multi-exit checkpoint at results/<model>/heads plus its held-out
# metrics and per-step loss history under results/<model>/heads-report/. Options come from the
# model's `train:` block (keys = train_heads.py flags in snake_case). A killed job resumes from
# results/<model>/heads.checkpoints on the rerun.


rule train_heads:
    input:
        model=lambda wc: PLAN.base_dir(wc.model),
        refs=lambda wc: PLAN.referenced_model_dirs(PLAN.models[wc.model]["train"]),
    output:
        checkpoint=directory(f"{R}/{{model}}/heads"),
        metrics=f"{R}/{{model}}/heads-report/training.json",
        history=f"{R}/{{model}}/heads-report/loss_history.json",
        history_csv=f"{R}/{{model}}/heads-report/loss_history.csv",
        plot=f"{R}/{{model}}/heads-report/loss.png",
    log:
        f"{R}/logs/train_heads/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/train_heads/{{model}}.tsv"
    conda:
        ENV
    threads: stage_threads("train_heads")
    resources:
        **stage_resources("train_heads"),
    params:
        script=f"{SCRIPTS}/train_heads.py",
        exits=lambda wc: ",".join(map(str, PLAN.models[wc.model]["exits"])),
        options=lambda wc: PLAN.train_options(wc.model),
        checkpoints=lambda wc: f"{R}/{wc.model}/heads.checkpoints",
    shell:
        "python {params.script} --model {input.model:q} --exits {params.exits}"
        " --output-dir {output.checkpoint:q} --metrics {output.metrics:q}"
        " --loss-json {output.history:q} --loss-csv {output.history_csv:q}"
        " --loss-plot {output.plot:q} --checkpoint-dir {params.checkpoints:q}"
        " {params.options} > {log:q} 2>&1"
