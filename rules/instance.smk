# CL4WSIS (issue 16): class-incremental instance segmentation from image-level labels.
# Step 0 learns the base classes from pixel labels and instance maps; each step t >= 1 runs the
# method's two phases (pipeline/stages/train_instance.py) from the step t-1 instance model, and
# every step is evaluated by mask AP (VOC protocol) + semantic mIoU (pipeline/stages/evaluate_instance.py).
# Build them with the `instance_all` target (in the Snakefile), e.g. on the demo's multi-instance images:
#   snakemake instance_all --cores all --configfile config/demo.yaml config/demo-instance.yaml
# Paths, inputs and params: pipeline/workflow/instance.py (runs in an `instance/` folder of each seed).
import pipeline.workflow.instance as wfi


rule train_instance:
    input:
        unpack(wfi.instance_previous),
        split=SPLIT,
        data=DATA_INDEX,
    output:
        model=wfi.INSTANCE_MODEL,
        history=wfi.INSTANCE_HISTORY,
    log:
        log_path("train_instance", "{task}-{protocol}/seed{seed}/step{step}"),
    benchmark:
        bench_path("train_instance", "{task}-{protocol}/seed{seed}/step{step}")
    conda:
        ENV
    threads: config["threads"]["train"]
    resources:
        **res("train"),
    params:
        python=lambda wc, resources: wf.training_launcher(PYTHON, resources.gpu),
        cfg=lambda wc: wfi.instance_params(config, wc.step),
        previous=lambda wc, input: (f"--previous {shlex.quote(input.previous)}" if "previous" in input.keys() else ""),
        outdir=lambda wc, output: os.path.dirname(output.model),
        device=config["device"],
        workers=config["workers"],
    shell:
        "{params.python} -m pipeline train-instance --split {input.split:q} --data {input.data:q} --params {params.cfg:q}"
        " --outdir {params.outdir:q} {params.previous} --seed {wildcards.seed} --device {params.device}"
        " --workers {params.workers} --threads {threads} > {log} 2>&1"


rule evaluate_instance:
    input:
        model=wfi.INSTANCE_MODEL,
        split=SPLIT,
        data=DATA_INDEX,
    output:
        metrics=wfi.INSTANCE_METRICS,
    log:
        log_path("evaluate_instance", "{task}-{protocol}/seed{seed}/step{step}"),
    benchmark:
        bench_path("evaluate_instance", "{task}-{protocol}/seed{seed}/step{step}")
    conda:
        ENV
    threads: config["threads"]["evaluate"]
    resources:
        **res("evaluate"),
    params:
        python=PYTHON,
        device=config["device"],
    shell:
        "{params.python} -m pipeline evaluate-instance --model {input.model:q} --split {input.split:q}"
        " --data {input.data:q} --out {output.metrics:q} --device {params.device} --threads {threads} > {log} 2>&1"
