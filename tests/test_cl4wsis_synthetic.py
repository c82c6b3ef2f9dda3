"""CL4WSIS Phase 2 synthetic labels (Sec. 3.2): isolated instances, self-refinement, peaks, on maps
small enough to work out by hand."""

import math

import numpy as np
import torch

from pipeline.methods.cl4wsis.synthetic import (
    class_components,
    class_peaks,
    normalised_peak_maps,
    refined_targets,
    synthetic_targets,
)

SIGMA = 2.0


def _blob_map():
    """10 x 12 map: class 16 on rows 2-5, cols 3-7 (20 px)."""
    semantic = np.zeros((10, 12), dtype=np.int64)
    semantic[2:6, 3:8] = 16
    return semantic


def _probs(semantic, num_classes=21, value=1.0):
    prob = torch.zeros(num_classes, *semantic.shape)
    for c in np.unique(semantic):
        prob[int(c)][torch.from_numpy(semantic == c)] = value
    return prob


def test_one_blob_with_one_peak_is_an_isolated_instance():
    semantic = _blob_map()
    out = synthetic_targets(
        semantic, _probs(semantic), {16: np.array([[3, 5]])}, [16], None, None, sigma=SIGMA, min_area=1, refine=False
    )
    assert out["isolated"] == 1 and out["refined"] == 0
    blob = torch.from_numpy(semantic == 16)
    assert torch.equal(out["weight"][0], blob.float())  # W^syn = 1 on the instance, 0 elsewhere
    # center of mass (3.5, 5): the Gaussian peaks at the rounded center (round half to even: row 4)
    assert out["center"][0, 4, 5] == 1.0 and float(out["center"].max()) == 1.0
    close_row = math.exp(-1 / (2 * SIGMA**2))
    assert math.isclose(float(out["center"][0, 3, 5]), close_row, rel_tol=1e-6)
    # offsets point to the exact center of mass: pixel (2, 3) -> (+1.5, +2); pixel (5, 7) -> (-1.5, -2)
    assert out["offset"][:, 2, 3].tolist() == [1.5, 2.0] and out["offset"][:, 5, 7].tolist() == [-1.5, -2.0]
    assert float(out["offset"][:, ~blob].abs().max()) == 0.0


def test_two_touching_blobs_are_one_component_with_two_peaks_and_no_isolated_label():
    semantic = np.zeros((8, 14), dtype=np.int64)
    semantic[2:6, 1:7] = 17
    semantic[2:6, 7:13] = 17  # touching: one connected region of class 17
    peaks = {17: np.array([[3, 3], [3, 10]])}
    components = class_components(semantic, peaks, [17], min_area=1)
    assert len(components) == 1 and components[0].peaks == 2
    out = synthetic_targets(semantic, _probs(semantic), peaks, [17], None, None, sigma=SIGMA, min_area=1, refine=False)
    assert out["isolated"] == 0 and float(out["weight"].sum()) == 0.0


def test_two_blobs_apart_are_two_isolated_instances():
    semantic = np.zeros((8, 16), dtype=np.int64)
    semantic[2:5, 1:4] = 17  # center of mass (3, 2)
    semantic[2:5, 10:15] = 17  # center of mass (3, 12)
    out = synthetic_targets(
        semantic, _probs(semantic), {17: np.array([[3, 2], [4, 13]])}, [17], None, None, SIGMA, 1, refine=False
    )
    assert out["isolated"] == 2
    assert out["center"][0, 3, 2] == 1.0 and out["center"][0, 3, 12] == 1.0
    assert out["offset"][:, 2, 1].tolist() == [1.0, 1.0] and out["offset"][:, 2, 14].tolist() == [1.0, -2.0]


def test_small_components_and_peaks_of_other_classes_give_no_label():
    semantic = np.zeros((6, 6), dtype=np.int64)
    semantic[1:3, 1:3] = 16  # 4 px < min_area
    semantic[4, 4] = 18
    out = synthetic_targets(
        semantic, _probs(semantic), {16: np.array([[1, 1]]), 18: np.array([[4, 4]])}, [16], None, None, SIGMA, 5, False
    )
    assert float(out["weight"].sum()) == 0.0 and out["isolated"] == 0


def _touching_with_offsets():
    """Two touching 4 x 4 blobs of class 17 with offsets pointing exactly to (3, 3) and (3, 8)."""
    semantic = np.zeros((8, 12), dtype=np.int64)
    semantic[1:5, 1:5] = 17
    semantic[1:5, 6:10] = 17
    semantic[1:5, 5] = 17  # the joining column belongs to the left blob
    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(12.0), indexing="ij")
    left = xs <= 5
    cy = torch.full_like(ys, 3.0)
    cx = torch.where(left, torch.tensor(3.0), torch.tensor(8.0))
    offset = torch.stack([cy - ys, cx - xs])
    center = torch.zeros(8, 12)
    center[3, 3], center[3, 8] = 0.5, 0.25
    return semantic, offset, center, left


def test_self_refinement_splits_two_touching_instances_from_the_offsets():
    semantic, offset, center, left = _touching_with_offsets()
    component = class_components(semantic, {17: np.array([[2, 2], [2, 8]])}, [17], min_area=1)[0]
    prob = torch.from_numpy(semantic == 17).float() * 0.8
    refined = refined_targets(component, center, offset, prob, SIGMA, magnitude_threshold=0.5)
    # candidates: the two pixels with zero offset -> new centers (3, 3) and (3, 8)
    assert refined["centers"].tolist() == [[3, 3], [3, 8]]
    mask = torch.from_numpy(component.mask)
    # confidence = mean semantic probability (0.8) x predicted heatmap at the new center
    assert torch.allclose(refined["weight"][0][mask & left], torch.tensor(0.8 * 0.5))
    assert torch.allclose(refined["weight"][0][mask & ~left], torch.tensor(0.8 * 0.25))
    assert float(refined["weight"][0][~mask].abs().sum()) == 0.0
    # the targets redirect each pixel to its new center: here the offsets themselves
    assert torch.allclose(refined["offset"][:, mask], offset[:, mask])
    assert refined["center"][0, 3, 3] == 1.0 and refined["center"][0, 3, 8] == 1.0


def test_self_refinement_labels_the_non_isolated_components_only():
    semantic, offset, center, left = _touching_with_offsets()
    semantic[6, 0:4] = 17  # a second component, 4 px, with one peak: isolated (weight 1)
    peaks = {17: np.array([[2, 2], [2, 8], [6, 1]])}
    prob = _probs(semantic, value=0.8)
    out = synthetic_targets(
        semantic, prob, peaks, [17], center[None], offset, SIGMA, 1, refine=True, magnitude_threshold=0.5
    )
    assert out["isolated"] == 1 and out["refined"] == 2
    assert torch.all(out["weight"][0, 6, 0:4] == 1.0)
    assert math.isclose(float(out["weight"][0, 2, 2]), 0.4, rel_tol=1e-6)
    assert math.isclose(float(out["weight"][0, 2, 8]), 0.2, rel_tol=1e-6)
    # too many candidates (max_instances = 1): the touching component gets no label
    none = synthetic_targets(semantic, prob, peaks, [17], center, offset, SIGMA, 1, True, 0.5, max_instances=1)
    assert none["refined"] == 0 and float(none["weight"][0, 2, 2]) == 0.0


def test_peak_maps_and_peaks():
    scores = torch.full((1, 2, 16, 16), -1.0)
    scores[0, 0, 4, 4], scores[0, 0, 12, 12], scores[0, 0, 4, 12] = 2.0, 1.8, 0.2
    scores[0, 1, 8, 8] = 5.0
    maps = normalised_peak_maps(scores, torch.tensor([[1.0, 0.0]]), (16, 16), smooth=1)
    assert math.isclose(float(maps[0, 0].max()), 2.0 / (2.0 + 1e-5), rel_tol=1e-6)  # x / (max + 1e-5)
    assert float(maps[0, 1].abs().max()) == 0.0  # class not in the image labels
    peaks = class_peaks(maps[0], threshold=0.7, kernel=5, top_k=25)
    assert peaks[0].tolist() == [[4, 4], [12, 12]] and peaks[1].shape == (0, 2)  # 0.2 / 2 = 0.1 < 0.7
    assert class_peaks(maps[0], threshold=0.7, kernel=5, top_k=1)[0].tolist() == [[4, 4]]
    smoothed = normalised_peak_maps(scores, torch.tensor([[1.0, 1.0]]), (16, 16), smooth=3)
    assert math.isclose(float(smoothed[0, 0, 4, 4]), 2.0 / (2.0 + 1e-5) / 9, rel_tol=1e-5)  # a lone pixel / 9
