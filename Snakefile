# Auto-Contrastive Decoding reproduction pipeline.
#
#   snakemake                                   # the offline demo (config/config.yaml)
#   snakemake -n --configfile config/paper.yaml # plan the paper's grid
#   snakemake --report report.html              # HTML report of tables and figures
#
# The config is validated against workflow/schemas/config.schema.yaml (defaults filled in) and
# then checked and expanded by multiexit.pipeline.build_plan before any job is planned: a bad
# key stops the run here, naming the key. See docs/pipeline.md.
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from multiexit.pipeline import build_plan  # noqa: E402

# The offline demo is the default config; with --configfile only the given files count (Snakemake
# would otherwise merge their `models`/`datasets` mappings into the demo's).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


PLAN = build_plan(
    config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
)
config.update(PLAN.config)  # defaults filled in
LAYOUT = PLAN.layout  # every output path template (multiexit.pipeline.layout)
ENV = "../envs/multiexit.yaml"  # relative to workflow/rules/*.smk
SCRIPTS = os.path.relpath(Path(workflow.basedir) / "scripts")


# Jobs run `python scripts/...`: the interpreter Snakemake runs under comes first on their PATH, so
# no venv needs to be activated; with --software-deployment-method conda the activated env's own
# python comes before it.
envvars:
    "PATH",


os.environ["PATH"] = os.pathsep.join(
    [os.path.dirname(sys.executable), os.environ["PATH"]]
)


wildcard_constraints:
    model="|".join(re.escape(m) for m in PLAN.models),
    dataset="[A-Za-z0-9][A-Za-z0-9_.-]*",
    label="[A-Za-z0-9][A-Za-z0-9_.+=-]*",
    task="[A-Za-z0-9][A-Za-z0-9_.+=-]*",
    variant="[A-Za-z0-9][A-Za-z0-9_.+=-]*",
    shard=r"\d+",


include: "workflow/rules/common.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/prepare_models.smk"
include: "workflow/rules/train_heads.smk"
include: "workflow/rules/fit_cast.smk"
include: "workflow/rules/prompts.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/lm_eval.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        PLAN.all_targets(),
