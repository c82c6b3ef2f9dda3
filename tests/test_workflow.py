"""The Snakemake DAG: config validation, the full VOC matrix as a dry run, a tiny real run."""

import csv

import pytest
from helpers.dag import REPO, TINY, job_counts, snakemake  # shared with the scheduler and kill tests


def test_dry_run_lists_full_voc_matrix(tmp_path):
    proc = snakemake(tmp_path, "-n", "--cores", "2")
    counts = job_counts(proc.stdout + proc.stderr)
    # 15-5 and 10-10, disjoint and overlap, seed 0
    assert counts == {
        "prepare_data": 1,
        "splits": 4,
        "split_summary": 4,
        "train_base": 4,
        "evaluate": 4,
        "report": 1,
        "all": 1,
    }
    text = proc.stdout + proc.stderr
    for task in ("15-5", "10-10"):
        for protocol in ("disjoint", "overlap"):
            assert f"results/voc/{task}-{protocol}/seed0/step0/base/model.pt" in text


@pytest.mark.parametrize(
    "overlay, expected",
    [
        ("model: {backbone: resnet18, output_stride: 16, pretrained: none, dropout: 0.1}", "dropout"),
        ("train_base: {epochs: ten}", "epochs"),
        ("experiments: {tasks: ['15-6']}", "15-6"),
        ("device: gpu", "device"),
    ],
)
def test_bad_config_is_rejected_with_the_key(tmp_path, overlay, expected):
    (tmp_path / "bad.yaml").write_text(overlay + "\n")
    proc = snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(tmp_path / "bad.yaml"), check=False)
    assert proc.returncode != 0
    message = proc.stdout + proc.stderr
    assert expected in message
    assert not (tmp_path / "results").exists()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("dag")
    overlays = list(TINY)
    snakemake(workdir, "--cores", "2", *overlays)
    return workdir, overlays


def test_tiny_demo_dag_runs_end_to_end(demo_run):
    workdir, _ = demo_run
    results = workdir / "results"
    for protocol in ("disjoint", "overlap"):
        run = results / f"demo/15-5-{protocol}/seed0/step0/base"
        for name in ("model.pt", "history.csv", "metrics.json", "per_class.csv"):
            assert (run / name).is_file(), run / name
        assert len(list((run / "predictions").glob("*.png"))) == 16
        assert (workdir / f"logs/train_base/demo/15-5-{protocol}/seed0.log").is_file()
        assert (results / f"demo/benchmarks/train_base/15-5-{protocol}/seed0.tsv").is_file()
    report = results / "report"
    assert "Disjoint" in (report / "summary.md").read_text()
    figures = list((report / "figures").glob("*.png"))
    names = " ".join(f.name for f in figures)
    for kind in ("per_class_iou", "learning_curves", "qualitative"):
        assert kind in names, names
    assert not list(results.rglob("*.tmp-*"))


def test_forcerun_train_base_reruns_only_it_and_dependants(demo_run):
    workdir, overlays = demo_run
    proc = snakemake(workdir, "-n", "--cores", "2", *overlays, "--forcerun", "train_base")
    counts = job_counts(proc.stdout + proc.stderr)
    assert counts == {"train_base": 2, "evaluate": 2, "report": 1, "all": 1}
    # and nothing is left to do otherwise
    proc = snakemake(workdir, "-n", "--cores", "2", *overlays)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_download_runs_only_when_asked(tmp_path):
    # the default DAG does not download ...
    proc = snakemake(tmp_path, "-n", "--cores", "1")
    assert "download" not in job_counts(proc.stdout + proc.stderr)
    # ... asking for it schedules exactly that job
    proc = snakemake(tmp_path, "-n", "--cores", "1", "download")
    assert job_counts(proc.stdout + proc.stderr) == {"download": 1}


def test_missing_voc_root_fails_with_a_hint_and_no_output(tmp_path):
    proc = snakemake(tmp_path, "--cores", "1", "--until", "prepare_data", check=False)
    assert proc.returncode != 0
    log = (tmp_path / "logs/prepare_data/voc.log").read_text()
    assert "data/VOC2012/ImageSets/Segmentation/train_aug.txt" in log and "snakemake --cores 2 download" in log
    assert not (tmp_path / "results/voc/dataset.json").exists()


@pytest.mark.long  # a three-step DAG, ~45 s: pytest -m long
def test_chained_multistep_run(tmp_path):
    """10-5-5 overlap: step 1 starts from the base model, step 2 from step 1 of the same method."""
    overlays = [
        "--configfile",
        str(REPO / "config/demo.yaml"),
        str(REPO / "tests/data/tiny.yaml"),
        str(REPO / "tests/data/tiny-incremental.yaml"),
    ]
    snakemake(
        tmp_path,
        "--cores",
        "2",
        *overlays,
        "--config",
        "experiments={tasks: ['10-5-5'], protocols: [overlap], methods: [ft, wilson]}",
    )
    import torch

    from pipeline.io import read_json

    runs = tmp_path / "results/demo/10-5-5-overlap/seed0"
    for method in ("ft", "wilson"):
        for step, previous in ((1, "step0/base"), (2, f"step1/{method}")):
            meta = torch.load(runs / f"step{step}/{method}/model.pt", weights_only=True)["meta"]
            assert meta["previous"] == f"results/demo/10-5-5-overlap/seed0/{previous}/model.pt"
            assert meta["classes_per_step"] == [11, 5, 5][: step + 1]
            metrics = read_json(runs / f"step{step}/{method}/metrics.json")
            assert metrics["new_classes"] == list(range(11, 11 + 5 * step))
            assert len(metrics["per_class_iou"]) == 11 + 5 * step
    assert (tmp_path / "results/report/figures/steps_demo_10-5-5.png").is_file()


WEAK = [
    "--configfile",
    str(REPO / "config/demo.yaml"),
    str(REPO / "tests/data/tiny.yaml"),
    str(REPO / "tests/data/tiny-incremental.yaml"),
    str(REPO / "tests/data/tiny-weak.yaml"),
]


@pytest.mark.long  # every weak method through a tiny DAG, ~2 min: pytest -m long
def test_weak_methods_run_and_read_time_settings_do_not_rerun_coseg(tmp_path):
    """FMWISS (clip + oracle masks, memory bank grown at step 1) and the CAM baselines over two
    steps; then changing the fusion re-runs training, not the foundation models."""
    snakemake(tmp_path, "--cores", "2", *WEAK)
    from pipeline.cache import open_cache
    from pipeline.io import read_json

    task = tmp_path / "results/demo/10-5-5-overlap"
    for step in (1, 2):
        caches = sorted((task / f"step{step}/coseg").glob("*.h5"))
        assert (
            len(caches) == 2 and caches[0].name == "default.h5"
        )  # clip + oracle (named by the first variant using it)
        for cache in caches:
            with open_cache(cache) as reader:
                assert len(reader) == len(
                    read_json(tmp_path / f"results/demo/splits/10-5-5-overlap/step{step}.json")["ids"]
                )
        oracle = read_json(task / f"step{step}/coseg/quality/fmwiss_oracle.json")
        assert oracle["fused"]["miou"] == pytest.approx(1.0)  # the ground truth, read back through the cache
        for method in ("fmwiss", "fmwiss_oracle", "cam", "iscam"):
            metrics = read_json(task / f"seed0/step{step}/{method}/metrics.json")
            assert metrics["new_classes"] == list(range(11, 11 + 5 * step))
        # FMWISS: 1 teacher warm-up epoch *before* the 2 train_step epochs (Sec. 4.2), student loss after it
        with open(task / f"seed0/step{step}/fmwiss/history.csv") as handle:
            rows = list(csv.DictReader(handle))
        assert [r["all_bce"] != "" for r in rows] == [False, True, True]
        for cam in ("cam", "iscam"):
            quality = read_json(task / f"seed0/step{step}/pseudo/{cam}_quality.json")
            assert 0.0 <= quality["miou"] <= 1.0 and quality["n_images"] > 0
    # the step-1 bank holds the base classes and those of step 1 (from the fused masks)
    from pipeline.methods.fmwiss.memory import MemoryBank

    with MemoryBank(task / "step1/memory_bank/default.h5") as bank:
        classes = set(bank.classes())
    assert classes <= set(range(1, 16)) and classes & set(range(1, 11)) and classes & set(range(11, 16))
    summary = (tmp_path / "results/report/summary.md").read_text()
    assert "Pseudo-label quality" in summary and "Ablation of FMWISS" in summary and "IS-CAM" in summary

    (tmp_path / "fusion.yaml").write_text("methods: {fmwiss: {coseg: {fusion: intersection, top_k: 0.5}}}\n")
    counts = job_counts(snakemake(tmp_path, "-n", "--cores", "2", *WEAK, str(tmp_path / "fusion.yaml")).stdout)
    assert "coseg" not in counts and counts["train_step"] >= 1 and counts["coseg_quality"] >= 1
    (tmp_path / "seeds.yaml").write_text("coseg: {n_seeds: 5}\n")
    counts = job_counts(snakemake(tmp_path, "-n", "--cores", "2", *WEAK, str(tmp_path / "seeds.yaml")).stdout)
    assert counts["coseg"] >= 2  # at least the default cache of both steps is recomputed
