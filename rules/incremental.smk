# Incremental steps t >= 1: each method extends its own step t-1 model (step 0: the base model),
# reading the caches its spec names (method_inputs, rules/common.smk).


rule train_step:
    input:
        unpack(method_inputs),
        split=method_split,  # the experiment's split, or the method's own (relaxed labels, data fraction)
        previous=previous_model,
        data=DATA_INDEX,
    output:
        model=RUN_MODEL,
        history=RUN_HISTORY,
    log:
        log_path("train_step", "{task}-{protocol}/seed{seed}/step{step}/{method}"),
    benchmark:
        bench_path("train_step", "{task}-{protocol}/seed{seed}/step{step}/{method}")
    wildcard_constraints:
        step=r"[1-9]\d*",
        method="|".join(INCREMENTAL_METHODS),
    conda:
        ENV
    threads: config["threads"]["train"]
    resources:
        **res("train"),
    params:
        python=lambda wc, resources: wf.training_launcher(PYTHON, resources.gpu),
        cfg=step_params,
        caches=method_options,
        outdir=lambda wc, output: os.path.dirname(output.model),
        device=config["device"],
        workers=config["workers"],
    shell:
        "{params.python} -m pipeline train-step --method {wildcards.method} --split {input.split:q}"
        " --previous {input.previous:q} --data {input.data:q} --params {params.cfg:q} --outdir {params.outdir:q} {params.caches}"
        " --seed {wildcards.seed} --device {params.device} --workers {params.workers} --threads {threads}"
        " > {log} 2>&1"
