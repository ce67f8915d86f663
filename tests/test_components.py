"""Connected components in JAX (`sam3_jax.layers.components`) against scipy.ndimage.label, and the
two official post-processing functions built on them (hole filling / sprinkle removal of the image
predictor and of the video tracker) against the official code."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from sam3_jax.layers.components import connected_components, fill_holes, fill_holes_in_mask_scores

EIGHT = np.ones((3, 3), int)  # scipy structure of 8-connectivity (skimage's default for 2-D)


def _scipy(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    labels, _ = ndimage.label(mask, structure=EIGHT if connectivity == 8 else None)
    counts = np.bincount(labels.ravel())
    return labels, np.where(labels > 0, counts[labels], 0)


def _check(masks: np.ndarray, connectivity: int) -> np.ndarray:
    """Compares every (H, W) image of masks (..., H, W) with scipy; returns the round counts."""
    labels, areas, rounds = jax.jit(
        lambda m: connected_components(m, connectivity, return_rounds=True)
    )(masks)
    labels, areas = np.asarray(labels), np.asarray(areas)
    assert labels.dtype == np.int32 and areas.dtype == np.int32 and labels.shape == masks.shape
    flat = masks.reshape((-1,) + masks.shape[-2:])
    for i, m in enumerate(flat):
        ref_labels, ref_areas = _scipy(m, connectivity)
        np.testing.assert_array_equal(labels.reshape(flat.shape)[i], ref_labels, err_msg=f"labels of image {i}")
        np.testing.assert_array_equal(areas.reshape(flat.shape)[i], ref_areas, err_msg=f"areas of image {i}")
    return np.asarray(rounds)


def spiral(n: int) -> np.ndarray:
    """A one-pixel-wide square spiral path, arms one pixel apart: one component whose pixels lie
    up to ~n^2/2 steps from its first pixel (the worst case of label propagation)."""
    m = np.zeros((n, n), bool)
    y = x = 0
    m[0, 0] = True
    top, left, bottom, right = 0, 0, n - 1, n - 1
    d = 0
    steps_of = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    while True:
        dy, dx = steps_of[d]
        steps = 0
        while True:
            ny, nx = y + dy, x + dx
            if (d == 0 and nx > right) or (d == 1 and ny > bottom) or (d == 2 and nx < left) or (d == 3 and ny < top):
                break
            y, x = ny, nx
            m[y, x] = True
            steps += 1
        if steps == 0 or (steps < 2 and d != 0):
            break
        if d == 0:
            top = y + 2
        elif d == 1:
            right = x - 2
        elif d == 2:
            bottom = y - 2
        else:
            left = x + 2
        d = (d + 1) % 4
    return m


def snake(h: int, w: int) -> np.ndarray:
    """Boustrophedon: rows joined alternately at the right and left ends (one long path)."""
    m = np.zeros((h, w), bool)
    m[::2] = True
    for r in range(1, h, 2):
        m[r, w - 1 if (r // 2) % 2 == 0 else 0] = True
    return m


@pytest.mark.parametrize("connectivity", [8, 4])
def test_random_masks_match_scipy(connectivity):
    rng = np.random.default_rng(connectivity)
    for shape, p in [((4, 64, 64), 0.5), ((3, 37, 53), 0.59), ((2, 1, 40), 0.6), ((2, 40, 1), 0.6)]:
        _check(rng.random(shape) < p, connectivity)


@pytest.mark.parametrize("connectivity", [8, 4])
def test_long_paths_match_scipy_in_few_rounds(connectivity):
    """Spirals and snakes in four orientations (the component's first pixel at either end of the
    path or in the middle): exact, and pointer jumping keeps the loop short."""
    s, z = spiral(64), snake(63, 64)
    masks = [s, s[::-1], s[:, ::-1], s.T[::-1, ::-1], z, z[::-1, ::-1], z.T[:, ::-1]]
    masks = np.stack([np.pad(m, ((0, 64 - m.shape[0]), (0, 64 - m.shape[1]))) for m in masks])
    assert ndimage.label(s, structure=EIGHT)[1] == 1 and s.sum() > 2000
    rounds = _check(masks, connectivity)
    assert rounds.max() <= 12, rounds
    big = spiral(256)
    rounds = _check(big[None], connectivity)
    assert rounds.max() <= 16, rounds  # a path of ~33k pixels


def test_inverted_spiral_and_checkerboard():
    s = spiral(48)
    board = (np.indices((24, 24)).sum(0) % 2).astype(bool)
    _check(np.stack([~s, np.pad(board, ((0, 24), (0, 24)))]), 8)
    _check(np.stack([~s, np.pad(board, ((0, 24), (0, 24)))]), 4)


def test_empty_and_full_masks():
    masks = np.stack([np.zeros((20, 30), bool), np.ones((20, 30), bool)])
    labels, areas, rounds = connected_components(masks, return_rounds=True)
    np.testing.assert_array_equal(np.asarray(labels[0]), 0)
    np.testing.assert_array_equal(np.asarray(areas[0]), 0)
    np.testing.assert_array_equal(np.asarray(labels[1]), 1)
    np.testing.assert_array_equal(np.asarray(areas[1]), 600)
    assert int(rounds[0]) == 0  # nothing to label: the loop does not run
    single = connected_components(np.ones((1, 1), bool))
    assert int(single[0][0, 0]) == 1 and int(single[1][0, 0]) == 1


def test_leading_axes_and_non_bool_input():
    rng = np.random.default_rng(3)
    m = rng.random((2, 3, 12, 17)) < 0.5
    labels, areas = connected_components(m.astype(np.float32) * 3.0)  # non-zero = foreground
    for idx in np.ndindex(2, 3):
        ref_labels, ref_areas = _scipy(m[idx], 8)
        np.testing.assert_array_equal(np.asarray(labels[idx]), ref_labels)
        np.testing.assert_array_equal(np.asarray(areas[idx]), ref_areas)


def _smooth_logits(rng, shape, scale=2.0):
    """Random logits with blobs and holes of many sizes (smoothed noise)."""
    noise = rng.standard_normal(shape)
    out = np.stack([ndimage.gaussian_filter(n, 1.5) for n in noise.reshape((-1,) + shape[-2:])])
    out = out.reshape(shape) * scale * 4 + 0.3
    return out.astype(np.float32)


@pytest.mark.parametrize("hole,sprinkle,threshold", [(256.0, 0.0, 0.0), (256.0, 40.0, 0.0), (0.0, 12.0, 0.5),
                                                     (30.0, 30.0, -0.25)])
def test_fill_holes_matches_official_postprocess(hole, sprinkle, threshold):
    """Official `SAM2Transforms.postprocess_masks` at the input size (its bilinear resize is then
    the identity): hole filling and sprinkle removal exactly as ours."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("sam3")
    from sam3.model.utils.sam1_utils import SAM2Transforms

    rng = np.random.default_rng(int(hole + sprinkle))
    logits = _smooth_logits(rng, (2, 3, 64, 64))
    tf = SAM2Transforms(resolution=224, mask_threshold=threshold, max_hole_area=hole, max_sprinkle_area=sprinkle)
    ref = tf.postprocess_masks(torch.from_numpy(logits), (64, 64)).numpy()
    ours = np.asarray(jax.jit(lambda x: fill_holes(x, hole, threshold, sprinkle))(logits))
    np.testing.assert_array_equal(ours, ref)
    changed = ours != logits
    assert changed.any(), "the case fills / removes nothing"
    if hole > 0:
        assert (ours == threshold + 10).any()
    if sprinkle > 0:
        assert (ours == threshold - 10).any()


@pytest.mark.parametrize("max_area,fill,remove",
                         [(64, True, True), (200, True, False), (50, False, True), (0, True, True)])
def test_fill_holes_in_mask_scores_matches_official(max_area, fill, remove):
    torch = pytest.importorskip("torch")
    pytest.importorskip("sam3")
    from sam3.model.sam3_tracker_utils import fill_holes_in_mask_scores as official

    rng = np.random.default_rng(max_area)
    logits = _smooth_logits(rng, (3, 1, 48, 64))
    logits[2] = np.where(logits[2] > 2.0, 1.0, -1.0)  # a sparse mask: the half-area limit binds
    ref = official(torch.from_numpy(logits), max_area, fill_holes=fill, remove_sprinkles=remove).numpy()
    ours = np.asarray(fill_holes_in_mask_scores(logits, max_area, fill_holes=fill, remove_sprinkles=remove))
    np.testing.assert_array_equal(ours, ref)
    assert (ours != logits).any() == (max_area > 0)


def test_fill_holes_under_jit_and_vmap():
    rng = np.random.default_rng(0)
    logits = _smooth_logits(rng, (4, 32, 32))
    a = jax.jit(jax.vmap(lambda x: fill_holes(x, 20.0)))(logits)
    b = fill_holes(logits, 20.0)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: connected_components(np.ones((4, 4)), connectivity=6), "connectivity must be 4 or 8"),
        (lambda: connected_components(np.ones(4)), r"mask must have shape \(\.\.\., H, W\)"),
        (lambda: connected_components(np.ones((3, 0))), "non-empty"),
        (lambda: fill_holes(np.ones((4, 4), np.int32), 10), "logits must be a floating array"),
        (lambda: fill_holes(np.ones((4, 4), np.float32), np.ones(2)), "max_hole_area must be a number"),
        (lambda: fill_holes(np.ones((4, 4), np.float32), "big"), "max_hole_area must be a number"),
        (lambda: fill_holes(np.ones((4, 4), np.float32), 10, max_sprinkle_area=float("nan")),
         "max_sprinkle_area must be finite"),
        (lambda: fill_holes_in_mask_scores(np.ones((4, 4), np.float32), 2.5), "max_area must be a whole number"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_labels_are_exact_under_jit_with_traced_mask():
    """The loop runs to convergence on traced input (no iteration cap that could cut it short)."""
    s = spiral(40)

    @jax.jit
    def f(m):
        return connected_components(m > 0.5)

    labels, areas = f(jnp.asarray(s, jnp.float32))
    ref_labels, ref_areas = _scipy(s, 8)
    np.testing.assert_array_equal(np.asarray(labels), ref_labels)
    np.testing.assert_array_equal(np.asarray(areas), ref_areas)
