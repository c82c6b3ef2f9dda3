"""HDF5 cache: round trip, float16 storage, provenance check, atomic finish and resume."""

import h5py
import numpy as np
import pytest

from pipeline.cache import CacheError, CacheWriter, open_cache, provenance_mismatch

PROV = {"model": "ViT-B-16", "tag": "openai", "size": [448, 448], "n_seeds": 9}


def test_round_trip_stores_floats_as_float16_and_keeps_ints(tmp_path):
    path = tmp_path / "c.h5"
    scores = np.random.default_rng(0).random((2, 5, 7)).astype(np.float32)
    with CacheWriter(path, PROV) as writer:
        writer.put("2007_000032", {"scores": scores, "classes": np.array([3, 15], dtype=np.int64)}, {"height": 10})
        assert not path.exists()  # nothing looks finished before finish()
        writer.finish({"count": 1})
    with open_cache(path, PROV) as reader:
        arrays = reader.get("2007_000032")
        assert arrays["scores"].dtype == np.float16
        np.testing.assert_allclose(arrays["scores"], scores, atol=1e-3)
        np.testing.assert_array_equal(arrays["classes"], [3, 15])
        assert reader.attrs("2007_000032") == {"height": 10}
        assert reader.ids() == ["2007_000032"] and "2007_000032" in reader and len(reader) == 1
        assert reader.root_attrs()["count"] == 1
        with pytest.raises(CacheError, match="no entry for image 'x'"):
            reader.get("x")
    with h5py.File(path) as f:  # compressed, one chunk per dataset
        dataset = f["images/2007_000032/scores"]
        assert dataset.compression == "gzip" and dataset.chunks == (2, 5, 7)


def test_stale_provenance_is_an_error_naming_the_key(tmp_path):
    path = tmp_path / "c.h5"
    with CacheWriter(path, PROV) as writer:
        writer.put("a", {"x": np.zeros(3)})
        writer.finish()
    with pytest.raises(CacheError, match=r"n_seeds: cache has 9, expected 5"):
        open_cache(path, {**PROV, "n_seeds": 5})
    with pytest.raises(CacheError, match="not recorded"):
        open_cache(path, {"other": 1})
    open_cache(path, {"size": (448, 448)}).close()  # tuple vs stored list: equal after JSON


def test_resume_skips_done_images_and_restarts_on_other_provenance(tmp_path):
    path = tmp_path / "c.h5"
    writer = CacheWriter(path, PROV)
    writer.put("a", {"x": np.ones(2)})
    writer.close()  # killed before finish: only the partial file exists
    with pytest.raises(CacheError, match="unfinished"):
        open_cache(path)
    writer = CacheWriter(path, PROV)
    assert writer.done == {"a"}
    writer.close()
    writer = CacheWriter(path, {**PROV, "tag": "laion2b"})
    assert writer.done == set()
    writer.put("b", {"x": np.ones(2)})
    writer.finish()
    with open_cache(path) as reader:
        assert reader.ids() == ["b"]


def test_missing_and_bad_inputs(tmp_path):
    with pytest.raises(CacheError, match="not found"):
        open_cache(tmp_path / "none.h5")
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(CacheError, match="not a readable HDF5"):
        open_cache(tmp_path / "junk.h5")
    with CacheWriter(tmp_path / "c.h5", PROV) as writer:
        with pytest.raises(ValueError, match="contain no '/'"):
            writer.put("a/b", {})
    assert provenance_mismatch({"a": 1}, {"a": 1}) == []


def test_require_names_the_file_the_count_and_an_example_id(tmp_path):
    path = tmp_path / "c.h5"
    with CacheWriter(path, PROV) as writer:
        writer.put("a", {"x": np.zeros(1)})
        writer.put("b", {"x": np.zeros(1)})
        writer.finish()
    with open_cache(path) as reader:
        reader.require(["a", "b"], "co-segmentation")
        reader.require(iter([]), "co-segmentation")
        with pytest.raises(CacheError, match=r"c\.h5: no pseudo-label for 2 of the 3 images of the step, e\.g\. 'x'"):
            reader.require(["a", "x", "y"], "pseudo-label")
        # a one-pass iterator is counted in full, not as 0 images after the first pass
        with pytest.raises(CacheError, match="1 of the 2 images"):
            reader.require(iter(["a", "z"]), "pseudo-label")
