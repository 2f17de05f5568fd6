# Kolmogorov-Arnold Energy Models: the paper's tables and figures.
#
#     snakemake --cores all --use-conda                  # the paper (config/config.yaml), GPU
#     snakemake --cores all --configfile config/demo.yaml  # offline demo, minutes on a CPU
#     snakemake --profile profiles/slurm                  # on a SLURM cluster
#     snakemake --report report.html                      # after a run, with the same config
#
# A --configfile replaces config/config.yaml instead of being merged into it, so the demo
# (or any other configuration) runs exactly the cells it lists. `--config key=value` still
# overrides single values of whichever file is used.
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")


if not workflow.overwrite_configfiles:

    configfile: str(Path(workflow.basedir) / "config" / "config.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/benchmark.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/tables.smk"


rule all:
    default_target: True
    input:
        all_targets(),
    localrule: True
