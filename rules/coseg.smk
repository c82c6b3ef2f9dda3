# FMWISS: co-segmentation of each step's training images by the foundation models (computed
# once, cached in HDF5; fusion and top-K are applied when the cache is read), and the memory bank
# of old-class instances for copy-paste.


rule coseg:
    input:
        split=SPLIT,
        data=DATA_INDEX,
    output:
        COSEG + ".h5",
    wildcard_constraints:
        step=r"[1-9]\d*",
    params:
        # Only what the foundation models compute: changing fusion or top-K does not re-run this
        # rule (Snakemake re-runs a job whose params changed), only the jobs reading the cache.
        cfg=lambda wc: params_json(**coseg_compute(coseg_cache_config(wc.cache))),
        device=config["device"],
    log:
        log_path("coseg", "/{task}-{protocol}/step{step}/{cache}.log"),
    benchmark:
        bench_path("coseg", "/{task}-{protocol}/step{step}/{cache}.tsv")
    threads: config["threads"]["train"]
    resources:
        **res("train"),
    conda:
        ENV
    shell:
        "{PYTHON} -m pipeline coseg --split {input.split:q} --data {input.data:q} --params {params.cfg:q}"
        " --out {output:q} --device {params.device} --threads {threads} > {log} 2>&1"


def method_coseg(wildcards):
    return COSEG.format(dataset=wildcards.dataset, task=wildcards.task, protocol=wildcards.protocol,
                        step=wildcards.step, cache=coseg_cache_name(wildcards.method)) + ".h5"


rule coseg_quality:
    """Quality of the masks a fmwiss method (or variant) reads from its cache: mIoU of the
    initial, seed and fused masks against the ground truth of the step's training images, and a
    figure of a few images. Reads the cache only."""
    input:
        cache=method_coseg,
        split=SPLIT,
        data=DATA_INDEX,
    output:
        quality=COSEG_QUALITY + ".json",
        figure=COSEG_QUALITY + "_examples.png",
    wildcard_constraints:
        step=r"[1-9]\d*",
    params:
        cfg=lambda wc: params_json(**method_settings(wc.method)["coseg"]),
    log:
        log_path("coseg_quality", "/{task}-{protocol}/step{step}/{method}.log"),
    threads: config["threads"]["data"]
    resources:
        **res("light"),
    conda:
        ENV
    shell:
        "{PYTHON} -m pipeline coseg --split {input.split:q} --data {input.data:q} --params {params.cfg:q}"
        " --out {input.cache:q} --quality {output.quality:q} --figure {output.figure:q} --quality-only"
        " --threads {threads} > {log} 2>&1"


rule memory_bank:
    input:
        split=SPLIT.replace("{step}", "0"),
        data=DATA_INDEX,
    output:
        MEMORY0,
    params:
        cfg=params_json(**config["memory"]),
    log:
        log_path("memory_bank", "/{task}-{protocol}/step0.log"),
    benchmark:
        bench_path("memory_bank", "/{task}-{protocol}/step0.tsv")
    threads: config["threads"]["data"]
    resources:
        **res("light"),
    conda:
        ENV
    shell:
        "{PYTHON} -m pipeline memory-bank --split {input.split:q} --data {input.data:q} --params {params.cfg:q}"
        " --out {output:q} --threads {threads} > {log} 2>&1"


def previous_bank(wildcards):
    step = int(wildcards.step)
    wc = dict(dataset=wildcards.dataset, task=wildcards.task, protocol=wildcards.protocol)
    return MEMORY0.format(**wc) if step == 1 else MEMORY_STEP.format(step=step - 1, cache=wildcards.cache, **wc)


rule memory_bank_step:
    """The bank of step t: the bank of step t-1 plus instances of C^t cut out by the fused
    co-segmentation masks (used by step t+1's copy-paste)."""
    input:
        previous=previous_bank,
        split=SPLIT,
        data=DATA_INDEX,
        coseg=COSEG + ".h5",
    output:
        MEMORY_STEP,
    wildcard_constraints:
        step=r"[1-9]\d*",
    params:
        cfg=params_json(**config["memory"]),
        read=lambda wc: params_json(**coseg_cache_config(wc.cache)),
    log:
        log_path("memory_bank", "/{task}-{protocol}/step{step}/{cache}.log"),
    benchmark:
        bench_path("memory_bank", "/{task}-{protocol}/step{step}/{cache}.tsv")
    threads: config["threads"]["data"]
    resources:
        **res("light"),
    conda:
        ENV
    shell:
        "{PYTHON} -m pipeline memory-bank --split {input.split:q} --data {input.data:q} --params {params.cfg:q}"
        " --previous {input.previous:q} --coseg {input.coseg:q} --coseg-params {params.read:q}"
        " --out {output:q} --threads {threads} > {log} 2>&1"
