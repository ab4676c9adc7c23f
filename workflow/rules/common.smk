# Helper functions shared by the rules (the Snakefile builds PLAN before including this).


def stage_threads(stage):
    return PLAN.config["resources"][stage]["threads"]


def stage_resources(stage):
    """Resources of a stage for rules' resources: (slurm plugin keys: gpu, gpu_model, mem_mb, runtime)."""
    spec = PLAN.config["resources"][stage]
    out = {"mem_mb": spec["mem_mb"], "runtime": spec["runtime"]}
    if spec["gpu"]:
        out["gpu"] = spec["gpu"]
        if spec.get("gpu_model"):
            out["gpu_model"] = spec["gpu_model"]
    return out


def generation_inputs(wc):
    setting = PLAN.setting(wc.model, wc.label)
    return {
        "model": PLAN.model_dir(wc.model),
        "prompts": PLAN.prompt_set_path(wc.dataset, wc.model),
        "refs": PLAN.referenced_model_dirs(setting.params),
        "download": LAYOUT.download_report,
    }


def score_inputs(wc):
    return {
        "generations": PLAN.score_input(wc.model, wc.dataset, wc.label),
        "refs": PLAN.referenced_model_dirs(PLAN.config["metrics"]),
        "download": LAYOUT.download_report,
    }


def table_inputs(wc):
    return {
        "manifest": LAYOUT.manifest,
        "scores": [row["scores"] for row in PLAN.manifest()["generations"]],
        "lm_eval": [row["path"] for row in PLAN.manifest()["lm_eval"]],
        "training": [PLAN.training_report(m) for m in PLAN.training_models()],
        "history": [PLAN.training_history(m) for m in PLAN.training_models()],
    }


def figure_output(name, fmt):
    path = LAYOUT.path("figure", figure=name, format=fmt)
    if fmt == "png":
        return report(path, caption=f"../report/{name}.rst", category="Figures")
    return path
