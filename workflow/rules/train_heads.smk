# Stage 2: train one linear exit head per configured layer (base frozen by default) with
# scripts/train_heads.py -> an HF multi-exit checkpoint at results/<model>/heads plus its held-out
# metrics and per-step loss history under results/<model>/heads-report/. The model's `train:` block
# (HeadTrainingSettings + DataSettings fields) and its exits are one spec. A killed job resumes from
# results/<model>/heads.checkpoints on the rerun.


rule train_heads:
    input:
        model=lambda wc: PLAN.base_dir(wc.model),
        refs=lambda wc: PLAN.referenced_model_dirs(PLAN.models[wc.model]["train"]),
        download=LAYOUT.download_report,
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
        spec=lambda wc: PLAN.train_spec(wc.model),
        checkpoints=lambda wc: LAYOUT.path("heads_checkpoints", model=wc.model),
        env=PLAN.hf_env(),
    shell:
        "{params.env} python {params.script} --model {input.model:q} --spec {params.spec:q}"
        " --output-dir {output.checkpoint:q} --metrics {output.metrics:q}"
        " --loss-json {output.history:q} --loss-csv {output.history_csv:q}"
        " --loss-plot {output.plot:q} --checkpoint-dir {params.checkpoints:q}"
        " > {log:q} 2>&1"
