# wilss-pipeline: weakly incremental learning for semantic segmentation.
#
#   snakemake --cores all                                # the full VOC matrix of config.yaml
#   snakemake --cores all --configfile config/demo.yaml  # generated demo data, minutes on a CPU
#   snakemake --profile profiles/slurm                   # the same DAG on a SLURM cluster
#
# The DAG: [make_demo_data | download] → prepare_data → splits → train_base (step 0)
#          → [memory_bank, coseg (fmwiss) | train_cam → pseudo_labels (cam, vwe, iscam)]
#          → train_step (t = 1..T-1, per method) → evaluate → report.

import os

from snakemake.utils import min_version, validate

min_version("9.0")


# Relative to the Snakefile, so `snakemake -s path/to/Snakefile -d workdir` works from anywhere;
# data and results paths stay relative to the working directory.
configfile: os.path.join(workflow.basedir, "config.yaml")


validate(config, "schemas/config.schema.yaml")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/base.smk"
include: "rules/coseg.smk"
include: "rules/wsss.smk"
include: "rules/incremental.smk"
include: "rules/evaluate.smk"
include: "rules/coco.smk"  # COCO-to-VOC (dataset.kind: coco-voc) only
include: "rules/instance.smk"  # CL4WSIS, built by the `instance_all` target only


rule all:
    default_target: True
    input:
        all_targets(),


# CL4WSIS (issue 16): class-incremental instance segmentation, outside `all`, e.g.
#   snakemake instance_all --cores all --configfile config/demo.yaml config/demo-instance.yaml
rule instance_all:
    input:
        lambda wildcards: wfi.instance_targets(config),
