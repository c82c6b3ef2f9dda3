# Incremental steps t >= 1: each method extends its own step t-1 model (step 0: the base model).


def previous_model(wildcards):
    """model.pt of step t-1 of the same method; at t = 1 the shared step-0 model."""
    step = int(wildcards.step)
    method = "base" if step == 1 else wildcards.method
    return RUN.format(dataset=wildcards.dataset, task=wildcards.task, protocol=wildcards.protocol,
                      seed=wildcards.seed, step=step - 1, method=method) + "/model.pt"


def step_params(wildcards):
    """--params of train_step: the loop settings and the method's section (+ relaxed labels)."""
    method = dict(config["methods"][wildcards.method], relaxed=EXP["relaxed_labels"])
    return params_json(train=config["train_step"], method=method)


rule train_step:
    input:
        split=SPLIT,
        previous=previous_model,
        data=DATA_INDEX,
    output:
        model=RUN + "/model.pt",
        history=RUN + "/history.csv",
    wildcard_constraints:
        step=r"[1-9]\d*",
        method="|".join(INCREMENTAL_METHODS),
    params:
        cfg=step_params,
        outdir=lambda wc, output: os.path.dirname(output.model),
        device=config["device"],
        workers=config["workers"],
    log:
        log_path("train_step", "/{task}-{protocol}/seed{seed}/step{step}/{method}.log"),
    benchmark:
        bench_path("train_step", "/{task}-{protocol}/seed{seed}/step{step}/{method}.tsv")
    threads: config["threads"]["train"]
    resources:
        **res("train"),
    conda:
        ENV
    shell:
        "{PYTHON} -m pipeline train-step --method {wildcards.method} --split {input.split:q}"
        " --previous {input.previous:q} --data {input.data:q} --params {params.cfg:q} --outdir {params.outdir:q}"
        " --seed {wildcards.seed} --device {params.device} --workers {params.workers} --threads {threads}"
        " > {log} 2>&1"
