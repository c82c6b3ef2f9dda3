# Incremental steps t >= 1: each method extends its own step t-1 model (step 0: the base model).


def previous_model(wildcards):
    """model.pt of step t-1 of the same method; at t = 1 the shared step-0 model."""
    step = int(wildcards.step)
    method = "base" if step == 1 else wildcards.method
    return RUN.format(dataset=wildcards.dataset, task=wildcards.task, protocol=wildcards.protocol,
                      seed=wildcards.seed, step=step - 1, method=method) + "/model.pt"


def step_params(wildcards):
    """--params of train_step: the loop settings and the method's section (+ relaxed labels)."""
    method = dict(method_settings(wildcards.method), relaxed=EXP["relaxed_labels"])
    if method["method"] == wildcards.method:  # "method" names the base of a variant only
        del method["method"]
    return params_json(train=config["train_step"], method=method)


def method_inputs(wildcards):
    """The caches a method learns from: CAM pseudo-labels (cam, vwe, iscam); the co-segmentation
    cache and the memory bank of the classes learned before step t (fmwiss)."""
    base = method_settings(wildcards.method)["method"]
    wc = dict(dataset=wildcards.dataset, task=wildcards.task, protocol=wildcards.protocol, step=wildcards.step)
    if base in CAM_METHODS:
        return {"pseudo": PSEUDO.format(cam=base, seed=wildcards.seed, **wc) + ".h5"}
    if base == "fmwiss":
        cache = coseg_cache_name(wildcards.method)
        inputs = {"coseg": COSEG.format(cache=cache, **wc) + ".h5"}
        if method_settings(wildcards.method)["paste_prob"] > 0:
            step = int(wildcards.step)
            inputs["memory"] = (MEMORY0 if step == 1 else MEMORY_STEP).format(
                **dict(wc, step=step - 1, cache=cache))
        return inputs
    return {}


def method_options(wildcards, input):
    """--pseudo / --coseg / --memory options of train_step for the inputs of method_inputs."""
    return " ".join(f"--{key} {shlex.quote(str(input[key]))}" for key in ("pseudo", "coseg", "memory") if key in input.keys())


rule train_step:
    input:
        unpack(method_inputs),
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
        caches=method_options,
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
        " --previous {input.previous:q} --data {input.data:q} --params {params.cfg:q} --outdir {params.outdir:q} {params.caches}"
        " --seed {wildcards.seed} --device {params.device} --workers {params.workers} --threads {threads}"
        " > {log} 2>&1"
