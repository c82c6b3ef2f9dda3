# Data: the generated demo set or VOC (+ optional download), pair checks, incremental splits.


if config["dataset"]["kind"] == "synthetic":

    rule make_demo_data:
        output:
            train=dataset_path("train_list"),
            val=dataset_path("val_list"),
        log:
            f"logs/make_demo_data/{DATASET}.log",
        benchmark:
            f"results/{DATASET}/benchmarks/make_demo_data.tsv"
        conda:
            ENV
        threads: config["threads"]["data"]
        resources:
            **res("light"),
        params:
            python=PYTHON,
            root=lambda wc, output: dataset_root(output.train, config["dataset"]["train_list"]),
            cfg=config["synthetic"],
        shell:
            "{params.python} -m pipeline make-demo-data --root {params.root:q} --n-train {params.cfg[n_train]}"
            " --n-val {params.cfg[n_val]} --size {params.cfg[size]} --seed {params.cfg[seed]}"
            " --workers {threads} > {log} 2>&1"

else:

    rule download:
        # Run only when asked: `snakemake --cores 2 download`. Needs network (VOC 2012 + SBD, ~3.5 GB).
        output:
            done=os.path.join(ROOT, "DONE.json"),
        log:
            f"logs/download/{DATASET}.log",
        conda:
            ENV
        resources:
            **res("light"),
        params:
            python=PYTHON,
            root=lambda wc, output: dataset_root(output.done, "DONE.json"),
        shell:
            "{params.python} -m pipeline download --root {params.root:q} > {log} 2>&1"


rule prepare_data:
    input:
        dataset_lists,
    output:
        DATA_INDEX,
    log:
        log_path("prepare_data"),
    benchmark:
        bench_path("prepare_data")
    conda:
        ENV
    threads: config["threads"]["data"]
    resources:
        **res("light"),
    params:
        python=PYTHON,
        root=ROOT,
        train=config["dataset"]["train_list"],  # relative to root, as in the config
        val=config["dataset"]["val_list"],
        mask_dir=config["dataset"]["mask_dir"],
    shell:
        "{params.python} -m pipeline prepare-data --root {params.root:q} --train-list {params.train:q}"
        " --val-list {params.val:q} --mask-dir {params.mask_dir:q} --workers {threads}"
        " --output {output:q} > {log} 2>&1"


rule splits:
    input:
        data=DATA_INDEX,
    output:
        SPLIT,
    log:
        log_path("splits", "{task}-{protocol}/step{step}"),
    conda:
        ENV
    resources:
        **res("light"),
    params:
        python=PYTHON,
        relaxed="--relaxed" if EXP["relaxed_labels"] else "",
    shell:
        "{params.python} -m pipeline splits --index {input.data:q} --dataset {wildcards.dataset} --task {wildcards.task}"
        " --protocol {wildcards.protocol} --step {wildcards.step} {params.relaxed} --out {output:q} > {log} 2>&1"


rule split_summary:
    input:
        data=DATA_INDEX,
    output:
        summary=SPLIT_SUMMARY,
        csv=SPLIT_SUMMARY_CSV,
    log:
        log_path("split_summary", "{task}-{protocol}/summary"),
    conda:
        ENV
    resources:
        **res("light"),
    params:
        python=PYTHON,
        relaxed="--relaxed" if EXP["relaxed_labels"] else "",
    shell:
        "{params.python} -m pipeline splits --index {input.data:q} --dataset {wildcards.dataset} --task {wildcards.task}"
        " --protocol {wildcards.protocol} {params.relaxed} --summary {output.summary:q} > {log} 2>&1"


# A method's own split when its training data differ from the experiment's (a variant's
# relaxed_labels or data_fraction: WILSON Table 5, FMWISS Table 10); method_split names it.
rule split_variant:
    input:
        data=DATA_INDEX,
    output:
        wf.SPLIT_VARIANT,
    log:
        log_path("splits", "{task}-{protocol}/{split_variant}/step{step}"),
    wildcard_constraints:
        split_variant=wf.SPLIT_VARIANT_PATTERN,
        step=r"[1-9]\d*",
    conda:
        ENV
    resources:
        **res("light"),
    params:
        python=PYTHON,
        options=lambda wc: wf.split_variant_options(wc.split_variant),
    shell:
        "{params.python} -m pipeline splits --index {input.data:q} --dataset {wildcards.dataset} --task {wildcards.task}"
        " --protocol {wildcards.protocol} --step {wildcards.step} {params.options} --out {output:q} > {log} 2>&1"
