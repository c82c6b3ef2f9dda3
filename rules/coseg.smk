# FMWISS: co-segmentation of each step's training images by the foundation models (computed
# once, cached in HDF5; fusion and top-K are applied when the cache is read), and the memory bank
# of old-class instances for copy-paste.


rule coseg:
    input:
        split=SPLIT,
        data=DATA_INDEX,
    output:
        COSEG_CACHE,
    log:
        log_path("coseg", "{task}-{protocol}/step{step}/{cache}"),
    benchmark:
        bench_path("coseg", "{task}-{protocol}/step{step}/{cache}")
    wildcard_constraints:
        step=r"[1-9]\d*",
    conda:
        ENV
    threads: config["threads"]["train"]
    resources:
        **res("train"),
    params:
        python=PYTHON,
        # Only what the foundation models compute: changing fusion or top-K does not re-run this
        # rule (Snakemake re-runs a job whose params changed), only the jobs reading the cache.
        cfg=lambda wc: params_json(**coseg_compute(coseg_cache_config(wc.cache))),
        device=config["device"],
    shell:
        "{params.python} -m pipeline coseg --split {input.split:q} --data {input.data:q} --params {params.cfg:q}"
        " --out {output:q} --device {params.device} --threads {threads} > {log} 2>&1"


rule coseg_quality:
    """Quality of the masks a fmwiss method (or variant) reads from its cache: mIoU of the
    initial, seed and fused masks against the ground truth of the step's training images, and a
    figure of a few images. Reads the cache only."""
    input:
        cache=method_coseg,
        split=SPLIT,
        data=DATA_INDEX,
    output:
        quality=COSEG_QUALITY_JSON,
        figure=COSEG_QUALITY_FIGURE,
    log:
        log_path("coseg_quality", "{task}-{protocol}/step{step}/{method}"),
    wildcard_constraints:
        step=r"[1-9]\d*",
    conda:
        ENV
    threads: config["threads"]["data"]
    resources:
        **res("light"),
    params:
        python=PYTHON,
        cfg=lambda wc: params_json(**method_settings(wc.method)["coseg"]),
    shell:
        "{params.python} -m pipeline coseg --split {input.split:q} --data {input.data:q} --params {params.cfg:q}"
        " --out {input.cache:q} --quality {output.quality:q} --figure {output.figure:q} --quality-only"
        " --threads {threads} > {log} 2>&1"


rule memory_bank:
    input:
        split=SPLIT0,
        data=DATA_INDEX,
    output:
        MEMORY0,
    log:
        log_path("memory_bank", "{task}-{protocol}/step0"),
    benchmark:
        bench_path("memory_bank", "{task}-{protocol}/step0")
    conda:
        ENV
    threads: config["threads"]["data"]
    resources:
        **res("light"),
    params:
        python=PYTHON,
        cfg=params_json(**config["memory"]),
    shell:
        "{params.python} -m pipeline memory-bank --split {input.split:q} --data {input.data:q} --params {params.cfg:q}"
        " --out {output:q} --threads {threads} > {log} 2>&1"


rule memory_bank_step:
    """The bank of step t: the bank of step t-1 plus instances of C^t cut out by the fused
    co-segmentation masks (used by step t+1's copy-paste)."""
    input:
        previous=previous_bank,
        split=SPLIT,
        data=DATA_INDEX,
        coseg=COSEG_CACHE,
    output:
        MEMORY_STEP,
    log:
        log_path("memory_bank", "{task}-{protocol}/step{step}/{cache}"),
    benchmark:
        bench_path("memory_bank", "{task}-{protocol}/step{step}/{cache}")
    wildcard_constraints:
        step=r"[1-9]\d*",
    conda:
        ENV
    threads: config["threads"]["data"]
    resources:
        **res("light"),
    params:
        python=PYTHON,
        cfg=params_json(**config["memory"]),
        read=lambda wc: params_json(**coseg_cache_config(wc.cache)),
    shell:
        "{params.python} -m pipeline memory-bank --split {input.split:q} --data {input.data:q} --params {params.cfg:q}"
        " --previous {input.previous:q} --coseg {input.coseg:q} --coseg-params {params.read:q}"
        " --out {output:q} --threads {threads} > {log} 2>&1"
