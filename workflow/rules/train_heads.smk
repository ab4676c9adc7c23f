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
        checkpoint=directory(LAYOUT.heads),
        metrics=LAYOUT.training_report,
        history=LAYOUT.training_history,
        history_csv=LAYOUT.training_history_csv,
        plot=LAYOUT.training_plot,
    log:
        LAYOUT.log("train_heads"),
    benchmark:
        LAYOUT.benchmark("train_heads")
    conda:
        ENV
    threads: stage_threads("train_heads")
    resources:
        **stage_resources("train_heads"),
    params:
        script=f"{SCRIPTS}/train_heads.py",
        exits=lambda wc: ",".join(map(str, PLAN.models[wc.model]["exits"])),
        options=lambda wc: PLAN.train_options(wc.model),
        checkpoints=lambda wc: LAYOUT.path("heads_checkpoints", model=wc.model),
    shell:
        "python {params.script} --model {input.model:q} --exits {params.exits}"
        " --output-dir {output.checkpoint:q} --metrics {output.metrics:q}"
        " --loss-json {output.history:q} --loss-csv {output.history_csv:q}"
        " --loss-plot {output.plot:q} --checkpoint-dir {params.checkpoints:q}"
        " {params.options} > {log:q} 2>&1"
