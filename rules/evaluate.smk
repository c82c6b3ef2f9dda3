# Evaluation of every trained model on the val set, and the report.


rule evaluate:
    input:
        model=RUN_MODEL,
        split=SPLIT,
        data=DATA_INDEX,
    output:
        metrics=RUN_METRICS,
        per_class=RUN_PER_CLASS,
        predictions=directory(RUN_PREDICTIONS),
    log:
        log_path("evaluate", "{task}-{protocol}/seed{seed}/step{step}/{method}"),
    benchmark:
        bench_path("evaluate", "{task}-{protocol}/seed{seed}/step{step}/{method}")
    conda:
        ENV
    threads: config["threads"]["evaluate"]
    resources:
        **res("evaluate"),
    params:
        python=PYTHON,
        device=config["device"],
        batch_size=config["evaluate"]["batch_size"],
    shell:
        "{params.python} -m pipeline evaluate --model {input.model:q} --data {input.data:q} --split {input.split:q}"
        " --out {output.metrics:q} --pred-dir {output.predictions:q} --batch-size {params.batch_size}"
        " --device {params.device} --threads {threads} > {log} 2>&1"


rule report:
    input:
        metrics=[m for m, _ in evaluated_runs()],
        histories=[h for _, h in evaluated_runs()],
        quality=quality_files(),
        examples=quality_figures(),
        second=second_eval_metrics(),  # COCO-to-VOC: VOC val (WILSON/FMWISS Table 3)
    output:
        summary=report(REPORT_SUMMARY, caption="../report/summary.rst", category="Tables"),
        figures=report(
            directory(REPORT_FIGURES),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
        # issue 18: the background-shift table of every method (the confusion figures are in figures/)
        shift=report(
            os.path.join(os.path.dirname(REPORT_SUMMARY), "background_shift.csv"),
            caption="../report/background_shift.rst",
            category="Tables",
        ),
    log:
        "logs/report/report.log",
    conda:
        ENV
    resources:
        **res("light"),
    params:
        python=PYTHON,
        # the report folder, from the output (so a remote-storage run gets its local copy)
        outdir=lambda wc, output: os.path.dirname(output.summary),
        qualitative=config["report"]["qualitative_images"],
        variants=report_variants(),
        settings=report_settings(),
    shell:
        "{params.python} -m pipeline report --metrics {input.metrics:q} --histories {input.histories:q}"
        " --outdir {params.outdir:q} --figures-dir {output.figures:q} --qualitative {params.qualitative}"
        " --variants {params.variants:q} --quality {input.quality:q} --examples {input.examples:q}"
        " --settings {params.settings:q} --second-eval {input.second:q} > {log} 2>&1"
