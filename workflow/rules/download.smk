# Stage 0: fetch everything the config reads from the Hub into one HF cache (scripts/download.py).
# A localrule: it runs where Snakemake runs (the login node, which has internet), never as a SLURM
# job. Every job that reads a model or data set lists its report as an input and runs with
# PLAN.hf_env() (HF_HOME=<hf_cache> when set, HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1), so compute
# nodes without internet find models and datasets in the cache. With only local and package
# sources (the demo) it fetches nothing and just writes its report.


localrules:
    download,


rule download:
    output:
        report=LAYOUT.download_report,
    log:
        LAYOUT.log("download"),
    conda:
        ENV
    params:
        script=f"{SCRIPTS}/download.py",
        fetches=PLAN.download_spec(),
        hf_cache=(
            f"--hf-cache {shlex.quote(str(PLAN.hf_cache))}" if PLAN.hf_cache else ""
        ),
    shell:
        "python {params.script} --items-json {params.fetches:q} {params.hf_cache}"
        " --output {output.report:q} > {log:q} 2>&1"
