# Evaluation of every trained model on the val set, and the report.


rule evaluate:
    input:
        model=RUN + "/model.pt",
        split=SPLIT,
        data=DATA_INDEX,
    output:
        metrics=RUN + "/metrics.json",
        per_class=RUN + "/per_class.csv",
        predictions=directory(RUN + "/predictions"),
    params:
        device=config["device"],
        batch_size=config["evaluate"]["batch_size"],
    log:
        log_path("evaluate", "/{task}-{protocol}/seed{seed}/step{step}/{method}.log"),
    benchmark:
        bench_path("evaluate", "/{task}-{protocol}/seed{seed}/step{step}/{method}.tsv")
    threads: config["threads"]["evaluate"]
    resources:
        **res("evaluate"),
    conda:
        ENV
    shell:
        "{PYTHON} -m pipeline evaluate --model {input.model:q} --data {input.data:q} --split {input.split:q}"
        " --out {output.metrics:q} --pred-dir {output.predictions:q} --batch-size {params.batch_size}"
        " --device {params.device} --threads {threads} > {log} 2>&1"


rule report:
    input:
        metrics=[m for m, _ in evaluated_runs()],
        histories=[h for _, h in evaluated_runs()],
        quality=quality_files(),
        examples=[q.replace("_quality.json", "_examples.png").replace(".json", "_examples.png") for q in quality_files()],
    output:
        summary=report(f"{REPORT_DIR}/summary.md", caption="../report/summary.rst", category="Tables"),
        figures=report(
            directory(f"{REPORT_DIR}/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    params:
        outdir=REPORT_DIR,
        qualitative=config["report"]["qualitative_images"],
        variants=lambda wc: json.dumps({m: {"method": method_settings(m)["method"],
                                             "changes": variant_changes(config["methods"], m)}
                                         for m in EXP["methods"] if method_settings(m)["method"] != m}),
    log:
        "logs/report/report.log",
    resources:
        **res("light"),
    conda:
        ENV
    shell:
        "{PYTHON} -m pipeline report --metrics {input.metrics:q} --histories {input.histories:q}"
        " --outdir {params.outdir:q} --figures-dir {output.figures:q} --qualitative {params.qualitative}"
        " --variants {params.variants:q} --quality {input.quality:q} --examples {input.examples:q}"
        " > {log} 2>&1"
