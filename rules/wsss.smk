# Offline WSSS baselines (WILSON Sec. 4.2): a CAM network learns the step's new classes from
# image-level labels; its class activation maps become hard pseudo-labels (HDF5), on which the
# segmentation model is then trained (train_step, methods cam / vwe / iscam).


rule train_cam:
    input:
        split=SPLIT,
        data=DATA_INDEX,
    output:
        model=WSSS_MODEL,
        history=WSSS_HISTORY,
    log:
        log_path("train_cam", "{task}-{protocol}/seed{seed}/step{step}/{cam}"),
    benchmark:
        bench_path("train_cam", "{task}-{protocol}/seed{seed}/step{step}/{cam}")
    wildcard_constraints:
        step=r"[1-9]\d*",
    conda:
        ENV
    threads: config["threads"]["train"]
    resources:
        **res("train"),
    params:
        python=lambda wc, resources: wf.training_launcher(PYTHON, resources.gpu),
        cfg=lambda wc: params_json(train=config["train_cam"][wc.cam], cam=config["wsss"][wc.cam]),
        outdir=lambda wc, output: os.path.dirname(output.model),
        device=config["device"],
        workers=config["workers"],
    shell:
        "{params.python} -m pipeline train-cam --cam {wildcards.cam} --split {input.split:q} --data {input.data:q}"
        " --params {params.cfg:q} --outdir {params.outdir:q} --seed {wildcards.seed} --device {params.device}"
        " --workers {params.workers} --threads {threads} > {log} 2>&1"


rule pseudo_labels:
    input:
        model=WSSS_MODEL,
        split=SPLIT,
        data=DATA_INDEX,
    output:
        cache=PSEUDO_CACHE,
        quality=PSEUDO_QUALITY,
        figure=PSEUDO_FIGURE,
    log:
        log_path("pseudo_labels", "{task}-{protocol}/seed{seed}/step{step}/{cam}"),
    benchmark:
        bench_path("pseudo_labels", "{task}-{protocol}/seed{seed}/step{step}/{cam}")
    wildcard_constraints:
        step=r"[1-9]\d*",
    conda:
        ENV
    threads: config["threads"]["evaluate"]
    resources:
        **res("evaluate"),
    params:
        python=PYTHON,
        cfg=lambda wc: params_json(cam=config["wsss"][wc.cam]),
        device=config["device"],
    shell:
        "{params.python} -m pipeline pseudo-labels --cam {wildcards.cam} --model {input.model:q} --split {input.split:q}"
        " --data {input.data:q} --params {params.cfg:q} --out {output.cache:q} --quality {output.quality:q}"
        " --figure {output.figure:q} --device {params.device} --threads {threads} > {log} 2>&1"
