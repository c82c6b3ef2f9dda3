# Offline WSSS baselines (WILSON Sec. 4.2): a CAM network learns the step's new classes from
# image-level labels; its class activation maps become hard pseudo-labels (HDF5), on which the
# segmentation model is then trained (train_step, methods cam / vwe / iscam).


rule train_cam:
    input:
        split=SPLIT,
        data=DATA_INDEX,
    output:
        model=WSSS + "/model.pt",
        history=WSSS + "/history.csv",
    wildcard_constraints:
        step=r"[1-9]\d*",
    params:
        cfg=lambda wc: params_json(train=config["train_cam"][wc.cam], cam=config["wsss"][wc.cam]),
        outdir=lambda wc, output: os.path.dirname(output.model),
        device=config["device"],
        workers=config["workers"],
    log:
        log_path("train_cam", "/{task}-{protocol}/seed{seed}/step{step}/{cam}.log"),
    benchmark:
        bench_path("train_cam", "/{task}-{protocol}/seed{seed}/step{step}/{cam}.tsv")
    threads: config["threads"]["train"]
    resources:
        **res("train"),
    conda:
        ENV
    shell:
        "{PYTHON} -m pipeline train-cam --cam {wildcards.cam} --split {input.split:q} --data {input.data:q}"
        " --params {params.cfg:q} --outdir {params.outdir:q} --seed {wildcards.seed} --device {params.device}"
        " --workers {params.workers} --threads {threads} > {log} 2>&1"


rule pseudo_labels:
    input:
        model=WSSS + "/model.pt",
        split=SPLIT,
        data=DATA_INDEX,
    output:
        cache=PSEUDO + ".h5",
        quality=PSEUDO + "_quality.json",
        figure=PSEUDO + "_examples.png",
    wildcard_constraints:
        step=r"[1-9]\d*",
    params:
        cfg=lambda wc: params_json(cam=config["wsss"][wc.cam]),
        device=config["device"],
    log:
        log_path("pseudo_labels", "/{task}-{protocol}/seed{seed}/step{step}/{cam}.log"),
    benchmark:
        bench_path("pseudo_labels", "/{task}-{protocol}/seed{seed}/step{step}/{cam}.tsv")
    threads: config["threads"]["evaluate"]
    resources:
        **res("evaluate"),
    conda:
        ENV
    shell:
        "{PYTHON} -m pipeline pseudo-labels --cam {wildcards.cam} --model {input.model:q} --split {input.split:q}"
        " --data {input.data:q} --params {params.cfg:q} --out {output.cache:q} --quality {output.quality:q}"
        " --figure {output.figure:q} --device {params.device} --threads {threads} > {log} 2>&1"
