# COCO-to-VOC (dataset.kind: coco-voc; config/coco-voc.yaml): COCO-Stuff labels of COCO 2017 ->
# COCO-id maps + class index (per split) -> one assembled root in the paper's class numbering (COCO
# step-0 pool + VOC train_aug; COCO val2017 and VOC val) -> the usual DAG, every model evaluated on
# COCO val (evaluate) and VOC val (evaluate_second). Defined only for that kind.
import pipeline.workflow.coco as wfc

if wfc.is_coco_voc(config):
    COCO = wfc.coco_section(config)

    # the assembly writes the prepare-data index of a COCO-to-VOC run
    ruleorder: coco_voc_prepare > prepare_data

    if COCO.get("fixture"):

        rule make_coco_voc_fixture:
            output:
                marker=wfc.fixture_marker(config),
                train=dataset_path("train_list"),
                val=dataset_path("val_list"),
            log:
                f"logs/make_coco_voc_fixture/{DATASET}.log",
            conda:
                ENV
            threads: config["threads"]["data"]
            resources:
                **res("light"),
            params:
                python=PYTHON,
                coco_root=lambda wc, output: os.path.dirname(output.marker),
                voc_root=lambda wc, output: dataset_root(output.train, config["dataset"]["train_list"]),
                cfg=COCO["fixture_settings"],
            shell:
                "{params.python} -m pipeline make-coco-voc-fixture --coco-root {params.coco_root:q}"
                " --voc-root {params.voc_root:q} --n-coco-train {params.cfg[n_coco_train]}"
                " --n-coco-val {params.cfg[n_coco_val]} --n-voc-train {params.cfg[n_voc_train]}"
                " --n-voc-val {params.cfg[n_voc_val]} --coco-size {params.cfg[coco_size][0]} {params.cfg[coco_size][1]}"
                " --voc-size {params.cfg[voc_size]} --seed {params.cfg[seed]} --workers {threads} > {log} 2>&1"

    rule download_coco:
        # Run only when asked: `snakemake --cores 2 download_coco` (COCO 2017 + stuffthingmaps, ~20 GB;
        # `snakemake --cores 2 download` fetches the VOC part).
        output:
            done=os.path.join(COCO["root"], "DONE.json"),
        log:
            f"logs/download_coco/{DATASET}.log",
        conda:
            ENV
        resources:
            **res("light"),
        params:
            python=PYTHON,
            root=lambda wc, output: os.path.dirname(output.done),
            downloads=COCO["download_dir"],
            md5=f"--stuffthingmaps-md5 {COCO['stuffthingmaps_md5']}" if COCO.get("stuffthingmaps_md5") else "",
        shell:
            "{params.python} -m pipeline download-coco --root {params.root:q} --download-dir {params.downloads:q}"
            " {params.md5} > {log} 2>&1"

    rule coco_labels:
        """COCO-Stuff stuffthingmaps of one split -> COCO-id label maps (resumable: done maps are
        kept) -> the checked class-presence index, cached with provenance."""
        input:
            wfc.coco_sources(config),
        output:
            wfc.COCO_INDEX,
        log:
            log_path("coco_labels", "{split}"),
        benchmark:
            bench_path("coco_labels", "{split}")
        wildcard_constraints:
            split="train|val",
        conda:
            ENV
        threads: config["threads"]["data"]
        resources:
            **res("light"),
        params:
            python=PYTHON,
            root=lambda wc: wfc.coco_root(config, wc.split),
            label_root=wfc.label_root_option(config),
            images="--images" if COCO["check_images"] else "",
        shell:
            "{params.python} -m pipeline coco-labels --root {params.root:q} --split {wildcards.split}"
            " {params.label_root} {params.images} --cache {output:q} --workers {threads} > {log} 2>&1"

    rule coco_voc_prepare:
        """The two datasets in one root, in the paper's class numbering, and its prepare-data index
        (resumable: maps and links already there are kept)."""
        input:
            train=wfc.coco_index_file(config, "train"),
            val=wfc.coco_index_file(config, "val"),
            lists=wfc.voc_lists(config),
        output:
            DATA_INDEX,
        log:
            log_path("coco_voc_prepare"),
        benchmark:
            bench_path("coco_voc_prepare")
        conda:
            ENV
        threads: config["threads"]["data"]
        resources:
            **res("light"),
        params:
            python=PYTHON,
            coco_root=COCO["root"],
            label_root=wfc.label_root_option(config, "--coco-label-root"),
            val_root=wfc.val_root_option(config),
            voc_root=lambda wc, input: wfc.voc_root(config, input.lists),
            train=config["dataset"]["train_list"],
            val=config["dataset"]["val_list"],
            mask_dir=config["dataset"]["mask_dir"],
            out_root=wfc.assembled_root(config),
            images="" if COCO["check_images"] else "--labels-only",
        shell:
            "{params.python} -m pipeline coco-voc-prepare --coco-root {params.coco_root:q} {params.val_root}"
            " {params.label_root}"
            " --coco-train-index {input.train:q} --coco-val-index {input.val:q} --voc-root {params.voc_root:q}"
            " --voc-train-list {params.train:q} --voc-val-list {params.val:q} --voc-mask-dir {params.mask_dir:q}"
            " --out-root {params.out_root:q} {params.images} --workers {threads} --output {output:q} > {log} 2>&1"

    rule evaluate_second:
        """Every model on the second evaluation set too: VOC val (the 20 VOC classes, 61-80)."""
        input:
            model=RUN_MODEL,
            split=SPLIT,
            data=DATA_INDEX,
        output:
            metrics=wfc.RUN_EVAL2_METRICS,
            per_class=wfc.RUN_EVAL2_PER_CLASS,
            predictions=directory(wfc.RUN_EVAL2_PREDICTIONS),
        log:
            log_path("evaluate_second", "{task}-{protocol}/seed{seed}/step{step}/{method}"),
        benchmark:
            bench_path("evaluate_second", "{task}-{protocol}/seed{seed}/step{step}/{method}")
        conda:
            ENV
        threads: config["threads"]["evaluate"]
        resources:
            **res("evaluate"),
        params:
            python=PYTHON,
            device=config["device"],
            batch_size=config["evaluate"]["batch_size"],
            val_split=wfc.SECOND_EVAL,
        shell:
            "{params.python} -m pipeline evaluate --model {input.model:q} --data {input.data:q} --split {input.split:q}"
            " --val-split {params.val_split} --out {output.metrics:q} --pred-dir {output.predictions:q}"
            " --batch-size {params.batch_size} --device {params.device} --threads {threads} > {log} 2>&1"
