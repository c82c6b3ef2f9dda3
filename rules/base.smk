# Step 0: the segmentation model learns the base classes from pixel labels.


rule train_base:
    input:
        split=SPLIT0,
        data=DATA_INDEX,
    output:
        model=BASE_MODEL,
        history=BASE_HISTORY,
    log:
        log_path("train_base", "{task}-{protocol}/seed{seed}"),
    benchmark:
        bench_path("train_base", "{task}-{protocol}/seed{seed}")
    # Step 0 gates every method's step 1: scheduled before the cache producers when cores are few.
    priority: 10
    conda:
        ENV
    threads: config["threads"]["train"]
    resources:
        **res("train"),
    params:
        python=lambda wc, resources: wf.training_launcher(PYTHON, resources.gpu),
        cfg=params_json(model=config["model"], train=config["train_base"]),
        outdir=lambda wc, output: os.path.dirname(output.model),
        device=config["device"],
        workers=config["workers"],
    shell:
        "{params.python} -m pipeline train-base --split {input.split:q} --data {input.data:q} --params {params.cfg:q}"
        " --outdir {params.outdir:q} --seed {wildcards.seed} --device {params.device} --workers {params.workers}"
        " --threads {threads} > {log} 2>&1"
