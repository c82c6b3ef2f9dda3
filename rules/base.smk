# Step 0: the segmentation model learns the base classes from pixel labels.


rule train_base:
    input:
        split=SPLIT.replace("{step}", "0"),
        data=DATA_INDEX,
    output:
        model=RUN.replace("{step}", "0").replace("{method}", "base") + "/model.pt",
        history=RUN.replace("{step}", "0").replace("{method}", "base") + "/history.csv",
    params:
        cfg=params_json(model=config["model"], train=config["train_base"]),
        outdir=lambda wc, output: os.path.dirname(output.model),
        device=config["device"],
        workers=config["workers"],
    log:
        log_path("train_base", "/{task}-{protocol}/seed{seed}.log"),
    benchmark:
        bench_path("train_base", "/{task}-{protocol}/seed{seed}.tsv")
    threads: config["threads"]["train"]
    resources:
        **res("train"),
    conda:
        ENV
    shell:
        "{PYTHON} -m pipeline train-base --split {input.split:q} --data {input.data:q} --params {params.cfg:q}"
        " --outdir {params.outdir:q} --seed {wildcards.seed} --device {params.device} --workers {params.workers}"
        " --threads {threads} > {log} 2>&1"
