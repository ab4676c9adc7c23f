# Stage 0: fetch everything the config reads from the Hub into one HF cache (scripts/download.py).
# A localrule: it runs where Snakemake runs (the login node, which has internet), never as a SLURM
# job. Every job that reads the Hub lists its report as an input, and runs with HF_ENV, so compute
# nodes without internet find models and datasets in the cache.
#
# Plan API used (to be added to multiexit.pipeline.grid.Plan):
#   PLAN.download_report() -> f"{results}/download/report.json"
#   PLAN.hf_cache          -> config["hf_cache"] (None: the user's default HF_HOME)


def hf_env():
    """Shell prefix of every job after the download: the filled cache, and no Hub access."""
    prefix = "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1"
    if PLAN.hf_cache:
        prefix = f"HF_HOME={shlex.quote(str(PLAN.hf_cache))} " + prefix
    return prefix


HF_ENV = hf_env()


localrules:
    download,


rule download:
    output:
        report=PLAN.download_report(),
    log:
        f"{R}/logs/download.log",
    conda:
        ENV
    params:
        script=f"{SCRIPTS}/download.py",
        configfiles=" ".join(shlex.quote(str(f)) for f in workflow.configfiles),
        hf_cache=lambda wc: (
            f"--hf-cache {shlex.quote(str(PLAN.hf_cache))}" if PLAN.hf_cache else ""
        ),
    shell:
        "python {params.script} --configfile {params.configfiles} {params.hf_cache}"
        " --output {output.report:q} > {log:q} 2>&1"
