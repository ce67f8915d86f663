"""Tracker SAM heads: the prompt encoder and the mask decoder (with its two-way transformer) against
the official `PromptEncoder` / `MaskDecoder` built as the official tracker builds them (tiny config,
seeded + perturbed weights, converted with `sam_heads_rules`); the dynamic multimask selection;
conversion of the released keys; logical axes; input errors."""

from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam3_jax.convert.convert import convert
from sam3_jax.convert.rules_tracker import sam_heads_rules
from sam3_jax.layers.core import count_params
from sam3_jax.model.tracker.mask_decoder import mask_decoder_from_config, select_by_stability
from sam3_jax.model.tracker.prompt_encoder import prompt_encoder_from_config
from tests.conftest import assert_parity, official_key_table

torch = pytest.importorskip("torch")

TOL = 1e-5
SEED = 0
# Full-size element counts of the official tensors (sam3_official_keys.tsv): 17 and 131 tensors.
FULL_PROMPT_ENCODER_PARAMS = 6_476
FULL_MASK_DECODER_PARAMS = 4_215_109


def _t(x) -> "torch.Tensor":
    return torch.from_numpy(np.ascontiguousarray(x))


def _nchw(x: np.ndarray) -> "torch.Tensor":
    return _t(np.asarray(x).transpose(0, 3, 1, 2))


def _nhwc(x: "torch.Tensor") -> np.ndarray:
    return x.detach().permute(0, 2, 3, 1).contiguous().numpy()


def _grid(cfg) -> int:
    return cfg.image_size // cfg.vit.patch_size


# --------------------------------------------------------------------------------------------
# Abstract params, official modules, conversion


def _boxed_params(cfg) -> dict:
    """Boxed abstract params {'sam_prompt_encoder': ..., 'sam_mask_decoder': ...} at cfg's sizes."""
    g, c = _grid(cfg), cfg.tracker.d_model
    f32 = jnp.float32
    sds = jax.ShapeDtypeStruct
    pe, md = prompt_encoder_from_config(cfg), mask_decoder_from_config(cfg)
    pe_params = jax.eval_shape(
        lambda k: pe.init(k, points=jnp.zeros((1, 2, 2)), labels=jnp.zeros((1, 2), jnp.int32)), jax.random.key(0)
    )["params"]
    hr = None
    if cfg.tracker.sam.use_high_res_features:
        hr = (sds((1, 4 * g, 4 * g, c // 8), f32), sds((1, 2 * g, 2 * g, c // 4), f32))
    md_params = jax.eval_shape(
        lambda k, *a: md.init(k, *a[:4], multimask_output=True, high_res_features=a[4] if a[4:] else None),
        jax.random.key(0), sds((1, g, g, c), f32), sds((1, g, g, c), f32), sds((1, 3, c), f32),
        sds((1, g, g, c), f32), *(() if hr is None else (hr,)),
    )["params"]
    return {"sam_prompt_encoder": pe_params, "sam_mask_decoder": md_params}


@pytest.fixture(scope="module")
def official(tiny_cfg):
    """The official heads (built once), their state dict in the checkpoint layout (`tracker.`)."""
    from sam3_jax.parity.oracle import build_sam_heads, perturb_all_, state_dict_numpy

    torch.manual_seed(SEED)
    module = build_sam_heads(tiny_cfg)
    perturb_all_(module, SEED)
    state = {f"tracker.{k}": v for k, v in state_dict_numpy(module).items()}
    return module, state


@pytest.fixture(scope="module")
def params(official, tiny_cfg):
    _, state = official
    target = nn.meta.unbox(_boxed_params(tiny_cfg))
    converted, report = convert(state, {"tracker": target}, sam_heads_rules(tiny_cfg), pending_parts={})
    assert len(report.consumed) == len(state) == 148 and not report.recomputed and not report.pending
    return converted["tracker"]


@pytest.fixture(scope="module")
def models(tiny_cfg):
    return prompt_encoder_from_config(tiny_cfg), mask_decoder_from_config(tiny_cfg)


# --------------------------------------------------------------------------------------------
# Prompt encoder


def _points(rng, b, n, size):
    pts = rng.uniform(-0.1 * size, 1.1 * size, (b, n, 2)).astype(np.float32)
    labels = rng.choice(np.array([-1, 0, 1, 2, 3], np.int32), (b, n))
    labels[0, :4] = [1, 0, -1, 3][: min(n, 4)]
    return pts, labels


def _boxes(rng, b, size):
    xy = rng.uniform(-0.05 * size, 0.8 * size, (b, 2))
    wh = rng.uniform(1.0, 0.5 * size, (b, 2))
    return np.concatenate([xy, xy + wh], -1).astype(np.float32)


def _run_official_pe(module, points=None, labels=None, boxes=None, masks=None):
    pe = module.sam_prompt_encoder
    with torch.no_grad():
        sparse, dense = pe(
            points=None if points is None else (_t(points), _t(labels)),
            boxes=None if boxes is None else _t(boxes),
            masks=None if masks is None else _nchw(masks),
        )
    return sparse.numpy(), _nhwc(dense)


PE_CASES = {
    "points": dict(points=5),
    "points_one": dict(points=1),
    "box": dict(box=True),
    "box_and_points": dict(points=3, box=True),
    "mask_and_points": dict(points=2, mask=True),
    "mask_only": dict(mask=True),
    "nothing": dict(),
}


@pytest.mark.parametrize("case", list(PE_CASES))
def test_prompt_encoder_parity(case, official, params, models, tiny_cfg):
    spec = PE_CASES[case]
    module, _ = official
    pe, _ = models
    rng = np.random.default_rng(len(case))
    size, b, g = tiny_cfg.image_size, 2, _grid(tiny_cfg)
    kw = {}
    if "points" in spec:
        kw["points"], kw["labels"] = _points(rng, b, spec["points"], size)
    if spec.get("box"):
        kw["boxes"] = _boxes(rng, b, size)
    if spec.get("mask"):
        kw["masks"] = (rng.standard_normal((b, 4 * g, 4 * g, 1)) * 8).astype(np.float32)
    ref_sparse, ref_dense = _run_official_pe(module, **kw)
    sparse, dense = jax.jit(lambda p, **a: pe.apply({"params": p}, **a))(params["sam_prompt_encoder"], **kw)
    n = spec.get("points", 0) + (2 if spec.get("box") else 0) + (1 if "points" in spec and not spec.get("box") else 0)
    bs = b if kw else 1
    assert sparse.shape == (bs, n, tiny_cfg.tracker.d_model) and dense.shape == (bs, g, g, tiny_cfg.tracker.d_model)
    e1 = assert_parity(sparse, ref_sparse, TOL, f"{case} sparse")
    e2 = assert_parity(dense, ref_dense, TOL, f"{case} dense")
    print(f"prompt encoder {case}: sparse {e1:.3g}, dense {e2:.3g}")


def test_dense_pe_parity(official, params, models):
    module, _ = official
    pe, _ = models
    with torch.no_grad():
        ref = _nhwc(module.sam_prompt_encoder.get_dense_pe())
    ours = pe.apply({"params": params["sam_prompt_encoder"]}, method=pe.get_dense_pe)
    err = assert_parity(ours, ref, TOL, "dense pe")
    print(f"dense pe: {err:.3g}")


def test_gaussian_matrix_is_the_checkpoint_buffer(official, params):
    """The random-Fourier matrix is copied from the official buffer, never redrawn."""
    module, _ = official
    ref = module.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.numpy()
    np.testing.assert_array_equal(
        np.asarray(params["sam_prompt_encoder"]["pe_layer"]["positional_encoding_gaussian_matrix"]), ref
    )


# --------------------------------------------------------------------------------------------
# Mask decoder


@pytest.fixture(scope="module")
def decoder_inputs(official, tiny_cfg):
    """Three prompts on three images: points (with the tracker's padding point), points + a mask
    prompt, and points on an image whose 4g level is 40x larger (a high-contrast upscaled map, so
    that token 0's mask is stable and both branches of the dynamic selection run). Prompt
    embeddings come from the official prompt encoder, so the decoder is compared on its own."""
    module, _ = official
    rng = np.random.default_rng(7)
    g, c, b, size = _grid(tiny_cfg), tiny_cfg.tracker.d_model, 3, tiny_cfg.image_size
    pts, labels = _points(rng, b, 2, size)
    labels[:] = rng.integers(0, 2, labels.shape)
    masks = (rng.standard_normal((b, 4 * g, 4 * g, 1)) * 8).astype(np.float32)
    sp_pts, dense_nomask = _run_official_pe(module, pts, labels)
    sp_mask, dense_mask = _run_official_pe(module, pts, labels, masks=masks)
    dense = dense_nomask.copy()
    dense[1] = dense_mask[1]
    fpn0 = rng.standard_normal((b, 4 * g, 4 * g, c)).astype(np.float32)
    fpn0[2] *= 40.0
    fpn1 = rng.standard_normal((b, 2 * g, 2 * g, c)).astype(np.float32)
    with torch.no_grad():
        image_pe = _nhwc(module.sam_prompt_encoder.get_dense_pe())
        s0 = _nhwc(module.sam_mask_decoder.conv_s0(_nchw(fpn0)))
        s1 = _nhwc(module.sam_mask_decoder.conv_s1(_nchw(fpn1)))
    return dict(
        image_embeddings=rng.standard_normal((b, g, g, c)).astype(np.float32), image_pe=image_pe,
        sparse=sp_pts, dense=dense, fpn0=fpn0, fpn1=fpn1, feat_s0=s0, feat_s1=s1,
    )


def _run_official_md(module, x, *, multimask_output, training=False, repeat_image=False):
    md = module.sam_mask_decoder
    md.train(training)
    try:
        with torch.no_grad():
            masks, iou, tokens, obj = md(
                image_embeddings=_nchw(x["image_embeddings"]), image_pe=_nchw(x["image_pe"]),
                sparse_prompt_embeddings=_t(x["sparse"]), dense_prompt_embeddings=_nchw(x["dense"]),
                multimask_output=multimask_output, repeat_image=repeat_image,
                high_res_features=[_nchw(x["feat_s0"]), _nchw(x["feat_s1"])],
            )
    finally:
        md.eval()
    return {"masks": masks.numpy(), "iou_pred": iou.numpy(), "sam_tokens_out": tokens.numpy(),
            "object_score_logits": obj.numpy()}


def _run_ours_md(md, p, x, *, multimask_output, training=False, repeat_image=False):
    fn = jax.jit(lambda p, *a: md.apply(
        {"params": p}, *a[:4], high_res_features=a[4:], multimask_output=multimask_output, training=training,
        repeat_image=repeat_image,
    ))
    return fn(p, x["image_embeddings"], x["image_pe"], x["sparse"], x["dense"], x["feat_s0"], x["feat_s1"])


def test_high_res_projection_parity(decoder_inputs, params, models):
    _, md = models
    x = decoder_inputs
    s0, s1 = md.apply({"params": params["sam_mask_decoder"]}, x["fpn0"], x["fpn1"],
                      method=md.project_high_res_features)
    e0 = assert_parity(s0, x["feat_s0"], TOL, "conv_s0")
    e1 = assert_parity(s1, x["feat_s1"], TOL, "conv_s1")
    print(f"conv_s0 {e0:.3g} (max |official| {np.max(np.abs(x['feat_s0'])):.3g}), conv_s1 {e1:.3g}")


@pytest.mark.parametrize("mode", ["multimask", "single_dynamic", "single_training"])
def test_mask_decoder_parity(mode, decoder_inputs, official, params, models, tiny_cfg):
    module, _ = official
    _, md = models
    multimask, training = mode == "multimask", mode == "single_training"
    ref = _run_official_md(module, decoder_inputs, multimask_output=multimask, training=training)
    ours = _run_ours_md(md, params["sam_mask_decoder"], decoder_inputs, multimask_output=multimask, training=training)
    m = 3 if multimask else 1
    g4 = 4 * _grid(tiny_cfg)
    assert ours["masks"].shape == (3, m, g4, g4) and ours["iou_pred"].shape == (3, m)
    assert ours["sam_tokens_out"].shape == (3, m, tiny_cfg.tracker.d_model)
    for k in ("masks", "iou_pred", "sam_tokens_out", "object_score_logits"):
        err = assert_parity(ours[k], ref[k], TOL, f"{mode} {k}")
        print(f"mask decoder {mode} {k}: {err:.3g} (max |official| {np.max(np.abs(ref[k])):.3g})")


def test_dynamic_selection_runs_both_branches(decoder_inputs, official):
    """The single-mask comparison above exercises both outcomes of the stability test: the inputs
    give one stable token-0 mask and unstable ones (checked on the official all-token masks)."""
    module, _ = official
    md = module.sam_mask_decoder
    x = decoder_inputs
    with torch.no_grad():
        masks, _, _, _ = md.predict_masks(
            image_embeddings=_nchw(x["image_embeddings"]), image_pe=_nchw(x["image_pe"]),
            sparse_prompt_embeddings=_t(x["sparse"]), dense_prompt_embeddings=_nchw(x["dense"]),
            repeat_image=False, high_res_features=[_nchw(x["feat_s0"]), _nchw(x["feat_s1"])],
        )
        stable = (md._get_stability_scores(masks[:, 0:1]) >= md.dynamic_multimask_stability_thresh).numpy()
    assert stable.any() and not stable.all(), stable


def test_mask_decoder_repeat_image(decoder_inputs, official, params, models):
    """One image for all prompts (`repeat_image`), as the official decoder repeats it."""
    module, _ = official
    _, md = models
    x = dict(decoder_inputs)
    x["image_embeddings"] = x["image_embeddings"][:1]
    x["feat_s0"], x["feat_s1"] = x["feat_s0"][:1], x["feat_s1"][:1]
    ref = _run_official_md(module, x, multimask_output=True, repeat_image=True)
    ours = _run_ours_md(md, params["sam_mask_decoder"], x, multimask_output=True, repeat_image=True)
    for k in ("masks", "iou_pred", "sam_tokens_out", "object_score_logits"):
        assert_parity(ours[k], ref[k], TOL, f"repeat_image {k}")


def test_select_by_stability_matches_official(official):
    """Crafted logits: a stable token 0, an unstable one, one with nothing above -delta (score 1),
    an IoU tie among the multimask tokens (the first wins), values exactly at +-delta."""
    module, _ = official
    md = module.sam_mask_decoder
    rng = np.random.default_rng(3)
    b, h, w = 5, 8, 8
    logits = rng.standard_normal((b, 4, h, w)).astype(np.float32)
    logits[0, 0] = np.where(rng.random((h, w)) < 0.5, 5.0, -5.0)  # stable
    logits[1, 0] = rng.uniform(-0.1, 0.1, (h, w))  # unstable
    logits[2, 0] = -3.0  # area_u == 0 -> stability 1 -> stable
    logits[3, 0] = np.float32(0.05)  # not > delta, but > -delta: stability 0
    logits[4, 0, :, :] = 4.0
    logits[4, 0, 0, :2] = np.float32(-0.05)  # on the lower threshold: 62/62 -> stable
    iou = rng.uniform(0, 1, (b, 4)).astype(np.float32)
    iou[1, 1:] = [0.3, 0.7, 0.7]  # tie: index 1 of the multimask tokens
    iou[3, 1:] = [0.9, 0.2, 0.9]
    ref_masks, ref_iou = md._dynamic_multimask_via_stability(_t(logits), _t(iou))
    ours_masks, ours_iou = select_by_stability(
        jnp.asarray(logits), jnp.asarray(iou), md.dynamic_multimask_stability_delta,
        md.dynamic_multimask_stability_thresh,
    )
    np.testing.assert_array_equal(np.asarray(ours_masks), ref_masks.numpy())
    np.testing.assert_array_equal(np.asarray(ours_iou), ref_iou.numpy())


def test_prompt_encoder_and_decoder_chained(official, params, models, tiny_cfg):
    """Points + a mask prompt through our encoder and decoder, against the official pair, as the
    tracker's `_forward_sam_heads` chains them (single mask, dynamic selection)."""
    module, _ = official
    pe, md = models
    rng = np.random.default_rng(11)
    g, c, b, size = _grid(tiny_cfg), tiny_cfg.tracker.d_model, 2, tiny_cfg.image_size
    pts, labels = _points(rng, b, 3, size)
    labels[:] = rng.choice(np.array([-1, 0, 1], np.int32), labels.shape)
    masks = (rng.standard_normal((b, 4 * g, 4 * g, 1)) * 8).astype(np.float32)
    img = rng.standard_normal((b, g, g, c)).astype(np.float32)
    fpn0 = rng.standard_normal((b, 4 * g, 4 * g, c)).astype(np.float32)
    fpn1 = rng.standard_normal((b, 2 * g, 2 * g, c)).astype(np.float32)
    with torch.no_grad():
        opm, omd = module.sam_prompt_encoder, module.sam_mask_decoder
        sparse, dense = opm(points=(_t(pts), _t(labels)), boxes=None, masks=_nchw(masks))
        out = omd(image_embeddings=_nchw(img), image_pe=opm.get_dense_pe(), sparse_prompt_embeddings=sparse,
                  dense_prompt_embeddings=dense, multimask_output=False, repeat_image=False,
                  high_res_features=[omd.conv_s0(_nchw(fpn0)), omd.conv_s1(_nchw(fpn1))])
    ref = dict(zip(("masks", "iou_pred", "sam_tokens_out", "object_score_logits"), (o.numpy() for o in out)))

    @jax.jit
    def ours_fn(p, pts, labels, masks, img, fpn0, fpn1):
        sp, de = pe.apply({"params": p["sam_prompt_encoder"]}, pts, labels, masks=masks)
        image_pe = pe.apply({"params": p["sam_prompt_encoder"]}, method=pe.get_dense_pe)
        mp = {"params": p["sam_mask_decoder"]}
        hr = md.apply(mp, fpn0, fpn1, method=md.project_high_res_features)
        return md.apply(mp, img, image_pe, sp, de, multimask_output=False, high_res_features=hr)

    ours = ours_fn(params, pts, labels, masks, img, fpn0, fpn1)
    for k in ref:
        err = assert_parity(ours[k], ref[k], TOL, f"chained {k}")
        print(f"chained {k}: {err:.3g}")


# --------------------------------------------------------------------------------------------
# Conversion of the released keys, params, axes


def test_full_size_param_counts_and_dry_run_conversion(full_cfg):
    shapes = nn.meta.unbox(_boxed_params(full_cfg))
    assert count_params(shapes["sam_prompt_encoder"]) == FULL_PROMPT_ENCODER_PARAMS
    assert count_params(shapes["sam_mask_decoder"]) == FULL_MASK_DECODER_PARAMS
    table = official_key_table(("tracker.sam_prompt_encoder.", "tracker.sam_mask_decoder."))
    assert len(table) == 148
    params, report = convert(table, {"tracker": shapes}, sam_heads_rules(full_cfg), dry_run=True, pending_parts={})
    assert sorted(report.consumed) == sorted(table) and not report.recomputed and not report.pending
    assert report.num_params == report.num_source_elements == FULL_PROMPT_ENCODER_PARAMS + FULL_MASK_DECODER_PARAMS
    assert jax.tree_util.tree_map(lambda x: x.shape, params["tracker"]) == jax.tree_util.tree_map(
        lambda x: x.shape, shapes
    )


def test_rules_with_other_prefixes(full_cfg):
    """The same rules for another source / target prefix (e.g. instance interactivity), or none."""
    table = {k.replace("tracker.", "inst_interactive_predictor.model.", 1): v for k, v in official_key_table(("tracker.sam_prompt_encoder.", "tracker.sam_mask_decoder.")).items()}
    shapes = nn.meta.unbox(_boxed_params(full_cfg))
    rules = sam_heads_rules(full_cfg, src_prefix="inst_interactive_predictor.model", dst_prefix="")
    params, report = convert(table, shapes, rules, dry_run=True, pending_parts={})
    assert len(report.consumed) == 148 and set(params) == {"sam_prompt_encoder", "sam_mask_decoder"}


def test_every_param_has_logical_axes(tiny_cfg):
    leaves = jax.tree_util.tree_leaves_with_path(
        _boxed_params(tiny_cfg), is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )
    assert leaves
    for path, leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned), f"{jax.tree_util.keystr(path)} has no logical axes"
        assert len(leaf.names) == leaf.value.ndim, jax.tree_util.keystr(path)


def test_gaussian_matrix_gets_no_gradient(params, models):
    pe, _ = models
    pts = np.array([[[10.0, 20.0], [100.0, 50.0]]], np.float32)
    labels = np.array([[1, 0]], np.int32)

    def loss(p):
        sparse, _ = pe.apply({"params": p}, pts, labels)
        return jnp.sum(sparse ** 2)

    grads = jax.grad(loss)(params["sam_prompt_encoder"])
    assert not np.any(np.asarray(grads["pe_layer"]["positional_encoding_gaussian_matrix"]))
    assert np.any(np.asarray(grads["point_embeddings_1"]["embedding"]))


# --------------------------------------------------------------------------------------------
# Input errors


def test_bad_point_labels(params, models):
    pe, _ = models
    p = {"params": params["sam_prompt_encoder"]}
    pts = np.zeros((1, 2, 2), np.float32)
    with pytest.raises(ValueError, match=r"labels must hold -1 .*got \[4\]"):
        pe.apply(p, pts, np.array([[1, 4]], np.int32))
    with pytest.raises(ValueError, match=r"labels must hold .*got \[-2\]"):
        pe.apply(p, pts, np.array([[-2, 0]], np.int32))
    with pytest.raises(ValueError, match=r"labels \(1, 3\) must have shape \(B, N\)"):
        pe.apply(p, pts, np.array([[1, 0, 1]], np.int32))
    with pytest.raises(ValueError, match="points and labels must be given together"):
        pe.apply(p, pts)
    with pytest.raises(ValueError, match=r"points must have shape \(B, N, 2\)"):
        pe.apply(p, np.zeros((1, 2, 3), np.float32), np.array([[1, 0]], np.int32))


def test_bad_boxes_and_masks(params, models, tiny_cfg):
    pe, _ = models
    p = {"params": params["sam_prompt_encoder"]}
    g = _grid(tiny_cfg)
    with pytest.raises(ValueError, match=r"masks must have shape \(B, 64, 64, 1\)"):
        pe.apply(p, masks=np.zeros((1, 1, 4 * g, 4 * g), np.float32))
    with pytest.raises(ValueError, match=r"boxes must have shape \(B, 4\)"):
        pe.apply(p, boxes=np.zeros((1, 2, 4), np.float32))
    with pytest.raises(ValueError, match="masks hold 2 rows for a batch of 1 prompts"):
        pe.apply(p, np.zeros((1, 1, 2), np.float32), np.ones((1, 1), np.int32),
                 masks=np.zeros((2, 4 * g, 4 * g, 1), np.float32))


def test_decoder_needs_high_res_features(decoder_inputs, params, models):
    _, md = models
    x = decoder_inputs
    p = {"params": params["sam_mask_decoder"]}
    args = (x["image_embeddings"], x["image_pe"], x["sparse"], x["dense"])
    with pytest.raises(ValueError, match="high_res_features must be the pair"):
        md.apply(p, *args, multimask_output=True)
    with pytest.raises(ValueError, match=r"high_res_features\[0\] must have shape"):
        md.apply(p, *args, multimask_output=True, high_res_features=(x["feat_s1"], x["feat_s1"]))
    with pytest.raises(ValueError, match="image_embeddings hold 3 images for 2 prompts"):
        md.apply(p, x["image_embeddings"], x["image_pe"], x["sparse"][:2], x["dense"][:2], multimask_output=True,
                 high_res_features=(x["feat_s0"][:2], x["feat_s1"][:2]))
