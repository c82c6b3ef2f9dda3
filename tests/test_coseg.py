"""Co-segmentation post-processing (FMWISS Eq. 4 [.]binary, Eq. 5) and the ``coseg`` stage."""

import json

import h5py
import numpy as np
import pytest
import torch

from pipeline.__main__ import main
from pipeline.cache import CacheError, CacheWriter, open_cache
from pipeline.foundation.coseg import (
    binarize_initial_mask,
    binarize_top_k,
    coseg_maps,
    coseg_masks,
    expected_provenance,
    fuse_masks,
    label_map,
    resolve_config,
    seed_foreground,
)

# ----------------------------------------------------------------------------- read-time maths


def test_top_k_quantile_rule_keeps_the_top_1_minus_k():
    attention = np.arange(10, dtype=float).reshape(2, 5)  # values 0..9
    # T = 0.7-quantile of 0..9 = 6.3 -> values 7, 8, 9 (the top 30 %)
    expected = attention > 6.5
    assert np.array_equal(binarize_top_k(attention, 0.7, "quantile"), expected)
    # literal main text: the top 70 % of locations, T = 0.3-quantile = 2.7 -> 3..9
    assert np.array_equal(binarize_top_k(attention, 0.7, "locations"), attention > 2.5)
    # K = 0.9 keeps less than K = 0.6 (Appendix A.3: 90 % "preserves too little")
    assert binarize_top_k(attention, 0.9).sum() == 1 and binarize_top_k(attention, 0.6).sum() == 4


def test_top_k_mass_rule_is_dinos():
    attention = np.array([[1.0, 2.0], [3.0, 4.0]])  # mass 0.1, 0.2, 0.3, 0.4
    # the fewest largest values holding 70 % of the mass: 0.4 + 0.3
    assert binarize_top_k(attention, 0.7, "mass").tolist() == [[False, False], [True, True]]
    # 85 %: 0.4 + 0.3 = 0.7 is not enough, 0.4 + 0.3 + 0.2 = 0.9 is
    assert binarize_top_k(attention, 0.85, "mass").tolist() == [[False, True], [True, True]]
    assert not binarize_top_k(np.zeros((2, 2)), 0.7, "mass").any()


def test_top_k_is_per_map_and_drops_ties_at_the_threshold():
    maps = np.stack([np.arange(10.0).reshape(2, 5), 100 + np.arange(10.0).reshape(2, 5)])
    out = binarize_top_k(maps, 0.7)
    assert out.shape == (2, 2, 5) and np.array_equal(out[0], out[1])
    flat = np.zeros((4, 4))
    flat[0, 0] = 1.0  # T = 0 -> only the peak
    assert binarize_top_k(flat, 0.7).sum() == 1
    assert not binarize_top_k(np.ones((4, 4)), 0.7).any()  # constant map: nothing above T
    with pytest.raises(ValueError, match="top_k_rule"):
        binarize_top_k(flat, 0.7, "percent")
    with pytest.raises(ValueError, match="top_k"):
        binarize_top_k(flat, 70)


def test_fusion_operators():
    initial = np.array([[[1, 1, 0, 0]]], dtype=bool)
    seeds = np.array([[[0, 1, 1, 0]]], dtype=bool)
    assert fuse_masks(initial, seeds, "union").tolist() == [[[True, True, True, False]]]
    assert fuse_masks(initial, seeds, "intersection").tolist() == [[[False, True, False, False]]]
    none = fuse_masks(initial, seeds, "none")
    assert none.tolist() == initial.tolist() and none is not initial
    with pytest.raises(ValueError, match="fusion"):
        fuse_masks(initial, seeds, "or")
    with pytest.raises(ValueError, match="differ"):
        fuse_masks(initial, seeds[..., :3], "union")


def test_initial_mask_binarisation_normalises_and_takes_the_argmax():
    # class a: scores 0.1..0.4 -> normalised 0, 1/3, 2/3, 1; class b higher on the first pixel
    scores = np.array([[[0.1, 0.2, 0.3, 0.4]], [[0.5, 0.0, 0.0, 0.1]]], dtype=np.float32)
    mask = binarize_initial_mask(scores, 0.5)
    assert mask[0].tolist() == [[False, False, True, True]]
    assert mask[1].tolist() == [[True, False, False, False]]  # normalised 1, 0, 0, 0.2
    single = binarize_initial_mask(scores[:1], 0.3)
    assert single.tolist() == [[[False, True, True, True]]]
    assert not binarize_initial_mask(np.full((1, 2, 2), 0.2), 0.5).any()  # constant map


def test_seed_foreground_falls_back_so_every_class_has_seeds():
    scores = np.array([[[0.9, 0.8], [0.7, 0.6]], [[0.1, 0.2], [0.3, 0.5]]], dtype=np.float32)
    # class 1 never wins the argmax: its own normalised scores > 0.5 are used
    fg = seed_foreground(scores, 0.5)
    assert fg[0].tolist() == [[True, True], [False, False]]
    assert fg[1].tolist() == [[False, False], [True, True]]
    assert seed_foreground(np.zeros((1, 2, 2)), 0.5).all()


def test_label_map_resolves_overlaps_by_score():
    masks = np.array([[[1, 1, 0]], [[0, 1, 1]]], dtype=bool)
    scores = np.array([[[0.9, 0.2, 0.0]], [[0.0, 0.8, 0.4]]], dtype=np.float32)
    assert label_map([16, 18], masks, scores).tolist() == [[16, 18, 18]]
    assert label_map([16, 18], masks).tolist() == [[16, 16, 18]]
    assert label_map([], np.zeros((0, 2, 3), bool)).tolist() == [[0, 0, 0]] * 2
    assert label_map([16, 18], masks, scores).dtype == np.uint8
    with pytest.raises(ValueError, match="classes"):
        label_map([16], masks)


def test_coseg_masks_upsample_then_binarise_and_fuse():
    clip = np.zeros((1, 2, 2), np.float16)
    clip[0, 0, 0] = 1.0  # top-left cell
    attention = np.zeros((1, 2, 2), np.float16)
    attention[0, 1, 1] = 1.0  # bottom-right cell
    arrays = {"classes": np.array([17]), "clip": clip, "attention": attention}
    classes, union = coseg_masks(arrays, {}, (4, 4))
    assert classes == [17] and union.shape == (1, 4, 4) and union.dtype == bool
    maps = coseg_maps(arrays, {"fusion": "none"}, (4, 4))
    # bilinear 2x2 -> 4x4 (align_corners=False) of [[1, 0], [0, 0]]: rows [1, .75, .25, 0],
    # [.75, .5625, .1875, 0], [.25, .1875, .0625, 0], [0, 0, 0, 0]; > 0.5 after min-max
    assert maps["initial"][0].tolist() == [
        [True, True, False, False],
        [True, True, False, False],
        [False] * 4,
        [False] * 4,
    ]
    # the mirror image for the attention: 7 zeros, .0625, .1875 x2, .25 x2, .5625, .75 x2, 1;
    # its 0.7-quantile (position 10.5 of 0..15) is .25, so the four values above it are kept
    assert np.argwhere(maps["seeds"][0]).tolist() == [[2, 2], [2, 3], [3, 2], [3, 3]]
    assert np.array_equal(maps["fused"], maps["initial"])
    assert np.array_equal(union, maps["initial"] | maps["seeds"])
    _, inter = coseg_masks(arrays, {"fusion": "intersection"}, (4, 4))
    assert not inter.any()
    with pytest.raises(KeyError, match="attention"):
        coseg_masks({"classes": np.array([1]), "clip": clip}, {}, (4, 4))


# ------------------------------------------------------------------------------ config / provenance


def test_provenance_ignores_read_time_keys_and_names_weights(tmp_path):
    base = {"clip": {"pretrained": "none"}, "ssl": {"pretrained": "none"}}
    reference = expected_provenance(base)
    for key, value in (
        ("fusion", "intersection"),
        ("top_k", 0.8),
        ("top_k_rule", "mass"),
        ("clip_threshold", 0.3),
        ("batch_size", 2),
    ):
        assert expected_provenance({**base, key: value}) == reference, key
    for key, value in (("seed", 1), ("n_seeds", 3), ("input_size", 224), ("seed_threshold", 0.4)):
        assert expected_provenance({**base, key: value}) != reference, key
    other = expected_provenance({**base, "clip": {"model": "ViT-L-14", "pretrained": "none"}})
    assert other["clip_model"] == "ViT-L-14"
    from pipeline import __version__

    assert reference["version"] == __version__
    checkpoint = tmp_path / "ibot.pth"
    checkpoint.write_bytes(b"weights")
    with_file = expected_provenance({**base, "ssl": {"pretrained": "ibot", "checkpoint": str(checkpoint)}})
    assert with_file["ssl_checkpoint"] == "sha256:" + __import__("hashlib").sha256(b"weights").hexdigest()
    with pytest.raises(FileNotFoundError, match="ssl.checkpoint"):
        expected_provenance({**base, "ssl": {"pretrained": "ibot", "checkpoint": str(tmp_path / "no.pth")}})
    oracle = expected_provenance({"source": "oracle"})
    assert oracle["source"] == "oracle" and "clip_model" not in oracle


def test_config_errors_name_the_key():
    assert resolve_config(None)["ssl"]["model"] == "vit_large_patch16_224"
    with pytest.raises(ValueError, match="coseg.fuson"):
        resolve_config({"fuson": "union"})
    with pytest.raises(ValueError, match="coseg.fusion"):
        resolve_config({"fusion": "or"})
    with pytest.raises(ValueError, match="coseg.clip.modle"):
        resolve_config({"clip": {"modle": "x"}})
    with pytest.raises(ValueError, match="coseg.top_k"):
        resolve_config({"top_k": 70})


# ------------------------------------------------------------------------------------------ stage

TINY_MODELS = {
    "clip": {"model": "ViT-S-16", "pretrained": "none", "templates": "photo"},
    "ssl": {"model": "vit_small_patch16_224", "pretrained": "none"},
    "input_size": 64,
    "batch_size": 4,
}


@pytest.fixture(scope="module")
def step1(tmp_path_factory):
    from pipeline.data.synthetic import generate

    root = tmp_path_factory.mktemp("coseg")
    generate(root / "data", n_train=40, n_val=4, size=48, seed=7)
    main(["prepare-data", "--root", str(root / "data"), "--output", str(root / "dataset.json")])
    main(
        [
            "splits",
            "--index",
            str(root / "dataset.json"),
            "--task",
            "15-5",
            "--protocol",
            "disjoint",
            "--outdir",
            str(root / "splits"),
        ]
    )
    return root, root / "splits" / "step1.json", root / "dataset.json"


def _coseg(split, data, params, out, *extra):
    main(
        [
            "coseg",
            "--split",
            str(split),
            "--data",
            str(data),
            "--params",
            json.dumps(params),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
            *extra,
        ]
    )


def test_oracle_source_gives_perfect_fused_masks(step1):
    root, split, data = step1
    out = root / "oracle" / "coseg.h5"
    _coseg(
        split,
        data,
        {"source": "oracle"},
        out,
        "--quality",
        str(root / "oracle" / "quality.json"),
        "--figure",
        str(root / "oracle" / "examples.png"),
    )
    quality = json.loads((root / "oracle" / "quality.json").read_text())
    ids = json.loads(split.read_text())["ids"]
    assert quality["n_images"] == len(ids) > 0
    assert quality["fused"]["miou"] == 1.0 and quality["initial"]["miou"] == 1.0
    assert set(quality["fused"]["per_class_iou"]) == {
        "background",
        "pottedplant",
        "sheep",
        "sofa",
        "train",
        "tvmonitor",
    }
    assert (root / "oracle" / "examples.png").stat().st_size > 0
    with open_cache(out, expected_provenance({"source": "oracle"})) as cache:
        assert sorted(cache.ids()) == sorted(ids)
        entry = cache.get(ids[0])
        assert entry["clip"].dtype == np.float16
        assert entry["classes"].tolist() == json.loads(split.read_text())["labels"][ids[0]]


def test_resume_skips_cached_images_and_stale_cache_is_an_error(step1):
    root, split, data = step1
    out = root / "resume" / "coseg.h5"
    params = {"source": "oracle", "n_seeds": 3}
    ids = json.loads(split.read_text())["ids"]
    marker = {
        "classes": np.array([16], np.int32),
        "clip": np.full((1, 2, 2), 0.25, np.float32),
        "attention": np.zeros((1, 2, 2), np.float32),
        "seeds": np.full((1, 3, 2), -1, np.int16),
    }
    with CacheWriter(out, expected_provenance(params)) as writer:  # a run killed after one image
        writer.put(ids[0], marker)
    assert not out.exists() and out.with_name("coseg.partial.h5").exists()
    _coseg(split, data, params, out)
    assert out.exists() and not out.with_name("coseg.partial.h5").exists()
    with open_cache(out, expected_provenance(params)) as cache:
        assert len(cache) == len(ids)
        assert np.all(cache.get(ids[0])["clip"] == np.float16(0.25))  # kept, not recomputed
        assert cache.get(ids[1])["clip"].shape[1:] == (48, 48)  # computed
    # read-time keys do not matter; compute-time ones do
    open_cache(out, expected_provenance({**params, "fusion": "intersection", "top_k": 0.8})).close()
    with pytest.raises(CacheError, match="n_seeds"):
        open_cache(out, expected_provenance({**params, "n_seeds": 9}))
    with pytest.raises(CacheError, match="source"):
        open_cache(out, expected_provenance({**TINY_MODELS, "n_seeds": 3}))


def test_resumed_run_computes_each_image_in_its_uninterrupted_batch(step1, monkeypatch):
    """A kill inside a batch: the resumed run recomputes that batch whole (CPU kernels differ
    across batch compositions), skips the batches cached in full, writes only missing images,
    and the cache equals an uninterrupted run's array for array."""
    from pipeline.foundation.compute import CosegModels

    root, split, data = step1
    ids = json.loads(split.read_text())["ids"]
    calls: list[list[str]] = []
    original = CosegModels.__call__

    def recording(self, images, batch_ids, labels):
        calls.append(list(batch_ids))
        return original(self, images, batch_ids, labels)

    monkeypatch.setattr(CosegModels, "__call__", recording)
    reference = root / "batches" / "reference.h5"
    _coseg(split, data, TINY_MODELS, reference)
    full_batches = list(calls)
    assert len(full_batches) >= 3 and all(len(b) == 4 for b in full_batches[:-1])
    # a run killed after the first batch and two images of the second
    kept = full_batches[0] + full_batches[1][:2]
    provenance = expected_provenance(TINY_MODELS)
    with open_cache(reference, provenance) as cache:
        arrays = {i: cache.get(i) for i in ids}
    resumed = root / "batches" / "coseg.h5"
    with CacheWriter(resumed, provenance) as writer:
        for image_id in kept:
            writer.put(image_id, {k: arrays[image_id][k] for k in ("classes", "clip", "attention", "seeds")})
    calls.clear()
    _coseg(split, data, TINY_MODELS, resumed)
    assert calls == full_batches[1:]
    with open_cache(resumed, provenance) as cache:
        assert sorted(cache.ids()) == sorted(ids)
        for image_id in ids:
            got = cache.get(image_id)
            for key in ("classes", "clip", "attention", "seeds"):
                assert got[key].dtype == arrays[image_id][key].dtype
                assert np.array_equal(got[key], arrays[image_id][key]), (image_id, key)


def test_clip_source_writes_feature_resolution_scores(step1):
    root, split, data = step1
    out = root / "clip" / "coseg.h5"
    _coseg(split, data, TINY_MODELS, out, "--quality", str(root / "clip" / "quality.json"))
    labels = json.loads(split.read_text())["labels"]
    with h5py.File(out) as handle:
        provenance = json.loads(handle.attrs["provenance"])
        assert provenance["clip_model"] == "ViT-S-16" and provenance["ssl_model"] == "vit_small_patch16_224"
        for image_id, group in handle["images"].items():
            k = len(labels[image_id])
            assert group["clip"].shape == (k, 4, 4) and group["clip"].dtype == np.float16
            assert group["attention"].shape == (k, 4, 4) and group["attention"].dtype == np.float16
            assert group["clip"].compression == "gzip"
            seeds = group["seeds"][()]
            assert seeds.shape == (k, 9, 2) and ((seeds >= -1) & (seeds < 4)).all()
            assert np.isclose(group["attention"][()].reshape(k, -1).max(1), 1.0, atol=1e-3).all()
            assert list(group.attrs["size"]) == [48, 48] and list(group.attrs["input_shape"]) == [64, 64]
    quality = json.loads((root / "clip" / "quality.json").read_text())
    assert 0.0 <= quality["fused"]["miou"] <= 1.0 and quality["config"]["fusion"] == "union"
    # a quality-only pass with fusion none reads the same cache: fused == initial
    _coseg(
        split,
        data,
        {**TINY_MODELS, "fusion": "none"},
        out,
        "--quality-only",
        "--quality",
        str(root / "clip" / "none.json"),
    )
    none = json.loads((root / "clip" / "none.json").read_text())
    assert none["fused"]["miou"] == none["initial"]["miou"] == quality["initial"]["miou"]


def test_batched_co_segmentation_equals_one_image_at_a_time(step1):
    from pipeline.foundation.compute import CosegModels

    cfg = resolve_config(TINY_MODELS)
    models = CosegModels(cfg, [16, 17, 18, 19, 20], torch.device("cpu"))
    torch.manual_seed(3)
    images = torch.rand(3, 3, 64, 96)
    ids, labels = ["x", "y", "z"], [[16, 18], [17], [20]]
    batched = models(images, ids, labels)
    single = [models(images[i : i + 1], ids[i : i + 1], labels[i : i + 1])[0] for i in range(3)]
    for a, b in zip(batched, single):
        assert a["classes"].tolist() == b["classes"].tolist()
        np.testing.assert_allclose(a["clip"], b["clip"], atol=1e-5)
        np.testing.assert_array_equal(a["seeds"], b["seeds"])
        np.testing.assert_allclose(a["attention"], b["attention"], atol=1e-5)
    # seeds lie in the foreground of the binarised initial mask (same grid: patch 16 for both)
    fg = seed_foreground(batched[0]["clip"], cfg["seed_threshold"])
    for k, seeds in enumerate(batched[0]["seeds"]):
        valid = seeds[(seeds >= 0).all(1)]
        assert fg[k][valid[:, 0], valid[:, 1]].all()
