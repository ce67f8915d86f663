"""Geometry / exemplar encoder: roi_align and grid_sample vs torch, module parity vs the official
`SequenceGeometryEncoder` (tiny config, seeded + perturbed weights), parameter count, conversion."""

from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam3_jax.convert.convert import convert
from sam3_jax.convert.rules_geometry import geometry_encoder_rules
from sam3_jax.layers.core import count_params
from sam3_jax.layers.roi_align import grid_sample, roi_align
from sam3_jax.model.geometry_encoder import GeometryEncoder, geometry_encoder_from_config
from tests.conftest import assert_parity, official_key_table

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

TOL = 1e-5


def _t(x: np.ndarray) -> "torch.Tensor":
    return torch.from_numpy(np.ascontiguousarray(x))


def _max_err(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


# --------------------------------------------------------------------------------------------
# roi_align / grid_sample units


def _torch_roi_align(feats_nhwc, boxes, out, **kw):
    x = _t(feats_nhwc.transpose(0, 3, 1, 2))
    per_image = [_t(b) for b in boxes]
    y = torchvision.ops.roi_align(x, per_image, out, **kw)  # (B*N, C, out, out)
    b, n = boxes.shape[:2]
    return y.reshape(b, n, *y.shape[1:]).permute(0, 1, 3, 4, 2).numpy()


def _test_boxes(h: int, w: int) -> np.ndarray:
    """xyxy boxes in pixel units covering every branch of the sampler."""
    return np.array(
        [
            [
                [2.3, 1.7, 9.1, 8.4],  # ordinary
                [0.0, 0.0, w, h],  # whole map
                [3.2, 4.1, 3.5, 4.3],  # smaller than a pixel (clamped to 1)
                [-5.0, -3.0, 4.0, 6.0],  # sticks out top-left
                [w - 3.0, h - 2.5, w + 7.0, h + 9.0],  # sticks out bottom-right
                [-3.0 * w, -2.0 * h, 4.0 * w, 3.0 * h],  # far larger than the map (grid > size)
            ],
            [
                [w + 2.0, h + 3.0, w + 9.0, h + 6.0],  # entirely outside
                [0.5, 0.5, w - 0.5, h - 0.5],
                [5.0, 2.0, 4.0, 1.0],  # inverted (x2 < x1)
                [-0.9, -0.99, 0.7, 0.2],  # inside the [-1, 0] band
                [1.0, 1.0, 1.0 + 14.0, 1.0 + 6.999],  # grid of exactly 2 / 1
                [w - 1.0, h - 1.0, w, h],  # last pixel
            ],
            [
                [0.0, 0.0, 7.0, 14.0],  # sides that are exact multiples of 7 (ceil must not round up)
                [1.0, 2.0, 1.0 + 21.0, 2.0 + 7.0],
                [-1.5, -1.5, w + 0.5, w + 0.5],  # samples exactly on -1 and on x = w
                [0.25, 0.75, w - 0.25, 3.0],
                [2.0, 2.0, 2.0, 2.0],  # empty box
                [w / 2, h / 2, w / 2 + 35.0, h / 2 + 28.0],
            ],
        ],
        np.float32,
    )


@pytest.mark.parametrize("aligned,sampling_ratio", [(False, -1), (True, -1), (False, 2), (True, 3)])
def test_roi_align_matches_torchvision(aligned, sampling_ratio):
    rng = np.random.default_rng(0)
    h, w, c = 16, 12, 5
    feats = rng.standard_normal((3, h, w, c)).astype(np.float32)
    boxes = _test_boxes(h, w)
    ours = jax.jit(
        lambda f, b: roi_align(f, b, 7, spatial_scale=1.0, sampling_ratio=sampling_ratio, aligned=aligned)
    )(feats, boxes)
    ref = _torch_roi_align(feats, boxes, 7, spatial_scale=1.0, sampling_ratio=sampling_ratio, aligned=aligned)
    assert _max_err(ours, ref) < TOL


def test_roi_align_spatial_scale_and_random_boxes():
    rng = np.random.default_rng(1)
    h, w, c = 20, 20, 4
    feats = rng.standard_normal((2, h, w, c)).astype(np.float32)
    xy = rng.uniform(-20, 90, (2, 40, 2))
    wh = rng.uniform(0, 60, (2, 40, 2))
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    ours = roi_align(feats, boxes, 7, spatial_scale=0.25)
    ref = _torch_roi_align(feats, boxes, 7, spatial_scale=0.25)
    assert _max_err(ours, ref) < TOL
    # No boxes: an empty result, no error.
    assert roi_align(feats, np.zeros((2, 0, 4), np.float32), 7).shape == (2, 0, 7, 7, c)


def test_grid_sample_matches_torch():
    rng = np.random.default_rng(2)
    h, w, c = 9, 13, 6
    feats = rng.standard_normal((2, h, w, c)).astype(np.float32)
    grid = rng.uniform(-1.3, 1.3, (2, 30, 2)).astype(np.float32)
    grid[0, :6] = [[-1, -1], [1, 1], [-1, 1], [0, 0], [1.0 / w, -1.0 / h], [1.2, 0.3]]
    ours = jax.jit(grid_sample)(feats, grid)
    ref = torch.nn.functional.grid_sample(
        _t(feats.transpose(0, 3, 1, 2)), _t(grid[:, :, None, :]), mode="bilinear",
        padding_mode="zeros", align_corners=False,
    )  # (B, C, P, 1)
    assert _max_err(ours, ref[..., 0].permute(0, 2, 1).numpy()) < TOL


# --------------------------------------------------------------------------------------------
# The official module and the conversion


def _target_shapes(model: GeometryEncoder, b=1, h=4, w=4, nb=1):
    d = model.d_model
    f = jax.ShapeDtypeStruct((b, h, w, d), jnp.float32)
    boxed = jax.eval_shape(
        lambda k: model.init(
            k, boxes=jnp.zeros((b, nb, 4)), box_labels=jnp.zeros((b, nb), jnp.int32),
            box_mask=jnp.zeros((b, nb), bool), img_feats=jnp.zeros(f.shape), img_pos=jnp.zeros(f.shape),
        ),
        jax.random.key(0),
    )["params"]
    return boxed


@pytest.fixture(scope="module")
def official_models(tiny_cfg):
    from sam3_jax.parity.oracle import build_geometry_encoder, perturb_all_, state_dict_numpy

    models = {}
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        m = build_geometry_encoder(tiny_cfg)
        perturb_all_(m, seed)
        models[seed] = (m, state_dict_numpy(m))
    return models


@pytest.fixture(scope="module")
def jax_model(tiny_cfg):
    return geometry_encoder_from_config(tiny_cfg)


def _convert(model, state):
    target = {"geometry_encoder": nn.meta.unbox(_target_shapes(model))}
    src = {f"geometry_encoder.{k}": v for k, v in state.items()}
    params, report = convert(src, target, geometry_encoder_rules(None))
    assert not report.pending and len(report.consumed) == len(state)
    return params["geometry_encoder"]


def _run_official(module, feats, pos, boxes, box_labels, box_mask, points=None, point_labels=None, point_mask=None):
    from sam3.model.geometry_encoders import Prompt

    from sam3_jax.parity.oracle import cuda_to_cpu

    b, h, w, c = feats.shape
    seq = lambda x: _t(x.reshape(b, h * w, c).transpose(1, 0, 2))  # noqa: E731
    with cuda_to_cpu(), torch.no_grad():
        kw = {}
        if points is not None:
            kw = dict(
                point_embeddings=_t(points.transpose(1, 0, 2)), point_labels=_t(point_labels.T).long(),
                point_mask=_t(point_mask),
            )
        prompt = Prompt(
            box_embeddings=_t(boxes.transpose(1, 0, 2)), box_labels=_t(box_labels.T).long(),
            box_mask=_t(box_mask), **kw,
        )
        tokens, mask = module(prompt, [seq(feats)], [(h, w)], [seq(pos)])
    return tokens.transpose(0, 1).numpy(), mask.numpy()


def _boxes(rng, b, nb, valid):
    cxcy = rng.uniform(0.05, 0.95, (b, nb, 2))
    wh = rng.uniform(0.02, 0.9, (b, nb, 2))
    boxes = np.concatenate([cxcy, wh], -1).astype(np.float32)
    if nb:
        boxes[0, 0] = [0.97, 0.5, 0.4, 1.3]  # sticks out of the image
    mask = np.arange(nb)[None, :] >= np.asarray(valid)[:, None]
    labels = rng.integers(0, 2, (b, nb)).astype(np.int32)
    if nb:
        labels[:, 0] = [1, 0]
    boxes[mask] = 0.0  # padded entries as the processor pads them
    return boxes, labels, mask


def _feats(rng, b, cfg):
    g = cfg.image_size // cfg.vit.patch_size
    feats = rng.standard_normal((b, g, g, cfg.d_model)).astype(np.float32)
    pos = rng.standard_normal((b, g, g, cfg.d_model)).astype(np.float32)
    return feats, pos


CASES = {
    "boxes_3_vs_1": dict(nb=3, valid=(3, 1)),
    "boxes_4_vs_4": dict(nb=4, valid=(4, 4)),
    "boxes_2_vs_0": dict(nb=2, valid=(2, 0)),
    "text_only_nb0": dict(nb=0, valid=(0, 0)),
    "points_and_boxes": dict(nb=3, valid=(2, 3), np=3, pvalid=(1, 3)),
    "points_only": dict(nb=0, valid=(0, 0), np=2, pvalid=(2, 0)),
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", list(CASES))
def test_parity_vs_official(seed, case, official_models, jax_model, tiny_cfg):
    spec = CASES[case]
    module, state = official_models[seed]
    params = _convert(jax_model, state)
    rng = np.random.default_rng(100 * seed + len(case))
    feats, pos = _feats(rng, 2, tiny_cfg)
    boxes, labels, mask = _boxes(rng, 2, spec["nb"], spec["valid"])
    kw = {}
    if "np" in spec:
        pts = rng.uniform(-0.05, 1.05, (2, spec["np"], 2)).astype(np.float32)
        pmask = np.arange(spec["np"])[None, :] >= np.asarray(spec["pvalid"])[:, None]
        plabels = rng.integers(0, 2, (2, spec["np"])).astype(np.int32)
        kw = dict(points=pts, point_labels=plabels, point_mask=pmask)
    ref_tokens, ref_mask = _run_official(module, feats, pos, boxes, labels, mask, **kw)
    tokens, out_mask = jax.jit(lambda p, **a: jax_model.apply({"params": p}, **a))(
        params, boxes=boxes, box_labels=labels, box_mask=mask, img_feats=feats, img_pos=pos, **kw
    )
    n = spec.get("np", 0) + spec["nb"] + 1
    assert tokens.shape == (2, n, tiny_cfg.d_model) and out_mask.shape == (2, n)
    np.testing.assert_array_equal(np.asarray(out_mask), ref_mask)
    # Every slot, padded ones included (they hold exactly what the official packing puts there).
    err = assert_parity(tokens, ref_tokens, TOL, f"{case} seed {seed}")
    print(f"{case} seed {seed}: max abs err {err:.3g}")


def test_full_size_parameter_count_and_axes(full_cfg, tiny_cfg):
    full = geometry_encoder_from_config(full_cfg)
    boxed = _target_shapes(full, h=72, w=72)
    assert count_params(nn.meta.unbox(boxed)) == 8_215_808
    assert count_params(nn.meta.unbox(boxed)["encode"]) == 4_736_256
    assert count_params(nn.meta.unbox(boxed)["boxes_pool_project"]) == 3_211_520
    leaves = jax.tree_util.tree_leaves_with_path(
        _target_shapes(geometry_encoder_from_config(tiny_cfg)), is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )
    assert leaves
    for path, leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned), f"{jax.tree_util.keystr(path)} has no logical axes"
        assert len(leaf.names) == leaf.value.ndim, jax.tree_util.keystr(path)
    stacked = [leaf for _, leaf in leaves if "layers" in leaf.names]
    assert stacked and all(leaf.names[0] == "layers" for leaf in stacked)


def test_dry_run_conversion_of_the_official_keys(full_cfg):
    table = official_key_table("detector.geometry_encoder.")
    assert len(table) == 76
    target = {"geometry_encoder": nn.meta.unbox(_target_shapes(geometry_encoder_from_config(full_cfg), h=72, w=72))}
    params, report = convert(table, target, geometry_encoder_rules(full_cfg), dry_run=True)
    assert len(report.consumed) == 76 and not report.recomputed and not report.pending
    assert report.num_params == report.num_source_elements == 8_215_808
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(target)


def test_parity_full_size(full_cfg):
    """Released sizes (72x72 level, FFN 2048, 3 layers): one batch with boxes and points."""
    from sam3_jax.parity.oracle import build_geometry_encoder, perturb_all_, state_dict_numpy

    torch.manual_seed(3)
    module = build_geometry_encoder(full_cfg)
    perturb_all_(module, 3)
    model = geometry_encoder_from_config(full_cfg)
    target = {"geometry_encoder": nn.meta.unbox(_target_shapes(model, h=72, w=72))}
    params, _ = convert(
        {f"geometry_encoder.{k}": v for k, v in state_dict_numpy(module).items()}, target,
        geometry_encoder_rules(full_cfg),
    )
    rng = np.random.default_rng(3)
    feats = rng.standard_normal((2, 72, 72, 256)).astype(np.float32)
    pos = rng.standard_normal((2, 72, 72, 256)).astype(np.float32)
    boxes, labels, mask = _boxes(rng, 2, 5, (5, 2))
    pts = rng.uniform(0, 1, (2, 2, 2)).astype(np.float32)
    pmask = np.array([[False, True], [False, False]])
    plabels = np.array([[1, 0], [0, 1]], np.int32)
    ref_tokens, ref_mask = _run_official(module, feats, pos, boxes, labels, mask, pts, plabels, pmask)
    tokens, out_mask = jax.jit(lambda p, **a: model.apply({"params": p}, **a))(
        params["geometry_encoder"], boxes=boxes, box_labels=labels, box_mask=mask, img_feats=feats,
        img_pos=pos, points=pts, point_labels=plabels, point_mask=pmask,
    )
    np.testing.assert_array_equal(np.asarray(out_mask), ref_mask)
    err = assert_parity(tokens, ref_tokens, TOL, "full size")
    print(f"full size: max abs err {err:.3g}")
