"""Tracker memory encoder against the official `SimpleMaskEncoder` built as
`_create_tracker_maskmem_backbone` builds it (tiny config, seeded + perturbed weights, converted with
`memory_encoder_rules`): the mask downsampler, the memory features and their position encoding, for
mask logits (sigmoid inside) and for the tracker's binarised x20 - 10 masks (skip_mask_sigmoid), with
masks that need the resize and masks already at the interpolation size; the identity `out_proj` when
mem_dim == d_model; conversion of the released keys; logical axes; input errors."""

from __future__ import annotations

import copy

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam3_jax.convert.convert import KeySpec, ShapeMismatchError, convert
from sam3_jax.convert.rules_tracker_memory import memory_encoder_rules
from sam3_jax.layers.core import count_params
from sam3_jax.model.tracker.memory_encoder import memory_encoder_from_config
from tests.conftest import assert_parity, official_key_table

torch = pytest.importorskip("torch")

TOL = 1e-5
SEED = 0
PREFIX = "tracker.maskmem_backbone."
# Released checkpoint: 40 tensors, 1,384,608 elements (sam3_official_keys.tsv).
FULL_NUM_KEYS = 40
FULL_MEMORY_ENCODER_PARAMS = 1_384_608


def _grid(cfg) -> int:
    return cfg.image_size // cfg.vit.patch_size


def _nchw(x: np.ndarray) -> "torch.Tensor":
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def _nhwc(x: "torch.Tensor") -> np.ndarray:
    return x.detach().permute(0, 2, 3, 1).contiguous().numpy()


def _boxed_params(cfg) -> dict:
    """Boxed abstract params of the memory encoder at cfg's sizes."""
    g, c, s = _grid(cfg), cfg.tracker.d_model, cfg.image_size
    model = memory_encoder_from_config(cfg)
    return jax.eval_shape(
        lambda k: model.init(k, jnp.zeros((1, g, g, c)), jnp.zeros((1, s, s, 1))), jax.random.key(0)
    )["params"]


def _official_and_params(cfg):
    """Official module (seeded, perturbed), its checkpoint-layout state and our converted params."""
    from sam3_jax.parity.oracle import build_memory_encoder, perturb_all_, state_dict_numpy

    torch.manual_seed(SEED)
    module = build_memory_encoder(cfg)
    perturb_all_(module, SEED)
    state = {f"tracker.{k}": v for k, v in state_dict_numpy(module).items()}
    target = nn.meta.unbox(_boxed_params(cfg))
    converted, report = convert(state, {"tracker": {"maskmem_backbone": target}}, memory_encoder_rules(cfg),
                                pending_parts={})
    assert sorted(report.consumed) == sorted(state) and not report.recomputed and not report.pending
    return module.maskmem_backbone, state, converted["tracker"]["maskmem_backbone"]


@pytest.fixture(scope="module")
def setup(tiny_cfg):
    module, state, params = _official_and_params(tiny_cfg)
    assert len(state) == FULL_NUM_KEYS
    return module, params, memory_encoder_from_config(tiny_cfg)


def _run_official(module, pix_feat, masks, skip):
    with torch.no_grad():
        m = _nchw(masks)
        down = module.mask_downsampler(m if skip else torch.sigmoid(m))
        out = module(_nchw(pix_feat), m, skip_mask_sigmoid=skip)
    assert isinstance(out["vision_pos_enc"], list) and len(out["vision_pos_enc"]) == 1
    return {"mask_embedding": _nhwc(down), "vision_features": _nhwc(out["vision_features"]),
            "vision_pos_enc": _nhwc(out["vision_pos_enc"][0])}


def _run_ours(model, params, pix_feat, masks, skip):
    @jax.jit
    def fn(p, pix_feat, masks):
        v = {"params": p}
        down = model.apply(v, masks, skip, method=model.downsample_masks)
        return {"mask_embedding": down, **model.apply(v, pix_feat, masks, skip_mask_sigmoid=skip)}

    return fn(params, pix_feat, masks)


def _inputs(cfg, mask_size: int, skip: bool, seed: int):
    rng = np.random.default_rng(seed)
    g, c, b = _grid(cfg), cfg.tracker.d_model, 2
    pix_feat = rng.standard_normal((b, g, g, c)).astype(np.float32)
    logits = (rng.standard_normal((b, mask_size, mask_size, 1)) * 4).astype(np.float32)
    if skip:  # the tracker's eval path for masks from clicks: binarise, then x20 - 10
        masks = (logits > 0).astype(np.float32) * 20.0 - 10.0
    else:
        masks = logits
    return pix_feat, masks


# Mask sizes at tiny (image 224, g = 16, interpolation size 256): the image resolution (an upsampling
# 224 -> 256, as 1008 -> 1152 at full size), the interpolation size (no resize) and a larger mask
# (an antialiased downsampling 320 -> 256).
CASES = {
    "sigmoid_image_res": (False, "image"),
    "sigmoid_interp_size": (False, "interp"),
    "skip_sigmoid_image_res": (True, "image"),
    "skip_sigmoid_interp_size": (True, "interp"),
    "skip_sigmoid_downsample": (True, 320),
}


@pytest.mark.parametrize("case", list(CASES))
def test_memory_encoder_parity(case, setup, tiny_cfg):
    module, params, model = setup
    skip, size = CASES[case]
    g = _grid(tiny_cfg)
    size = {"image": tiny_cfg.image_size, "interp": 16 * g}.get(size, size)
    pix_feat, masks = _inputs(tiny_cfg, size, skip, seed=len(case))
    ref = _run_official(module, pix_feat, masks, skip)
    ours = _run_ours(model, params, pix_feat, masks, skip)
    c, d = tiny_cfg.tracker.d_model, tiny_cfg.tracker.mem_dim
    assert ours["mask_embedding"].shape == (2, g, g, c)
    assert ours["vision_features"].shape == ours["vision_pos_enc"].shape == (2, g, g, d)
    for k in ("mask_embedding", "vision_features", "vision_pos_enc"):
        err = assert_parity(ours[k], ref[k], TOL, f"{case} {k}")
        print(f"memory encoder {case} {k}: {err:.3g} (max |official| {np.max(np.abs(ref[k])):.3g})")


def test_fuser_branch_at_unit_layer_scale(setup, tiny_cfg):
    """With gamma ~ 1 instead of ~0.02 (perturbed 1e-6) the CXBlock MLP branch dominates the fuser
    output, so a wrong dwconv / norm / pwconv there could not hide behind the residual."""
    module, params, model = setup
    module = copy.deepcopy(module)
    params = jax.tree_util.tree_map(lambda x: x, params)
    with torch.no_grad():
        for i, layer in enumerate(module.fuser.layers):
            layer.gamma.add_(1.0)
            params["fuser"][f"layers_{i}"]["gamma"] = jnp.asarray(layer.gamma.numpy())
    pix_feat, masks = _inputs(tiny_cfg, tiny_cfg.image_size, True, seed=9)
    ref = _run_official(module, pix_feat, masks, True)
    ours = _run_ours(model, params, pix_feat, masks, True)
    err = assert_parity(ours["vision_features"], ref["vision_features"], TOL, "unit gamma vision_features")
    print(f"unit gamma vision_features: {err:.3g} (max |official| {np.max(np.abs(ref['vision_features'])):.3g})")


def test_identity_out_proj_when_mem_dim_equals_width(tiny_cfg):
    """mem_dim == d_model: no `out_proj` (official nn.Identity), 38 keys, same outputs."""
    cfg = copy.deepcopy(tiny_cfg)
    cfg.tracker.mem_dim = cfg.tracker.d_model
    module, state, params = _official_and_params(cfg)
    assert len(state) == FULL_NUM_KEYS - 2 and "out_proj" not in params
    model = memory_encoder_from_config(cfg)
    pix_feat, masks = _inputs(cfg, cfg.image_size, True, seed=5)
    ref = _run_official(module, pix_feat, masks, True)
    ours = _run_ours(model, params, pix_feat, masks, True)
    assert ours["vision_features"].shape[-1] == cfg.tracker.d_model
    for k in ("vision_features", "vision_pos_enc"):
        assert_parity(ours[k], ref[k], TOL, f"identity out_proj {k}")


# --------------------------------------------------------------------------------------------
# Conversion of the released keys, params, axes


def test_full_size_param_count_and_dry_run_conversion(full_cfg):
    shapes = nn.meta.unbox(_boxed_params(full_cfg))
    assert count_params(shapes) == FULL_MEMORY_ENCODER_PARAMS
    table = official_key_table(PREFIX)
    assert len(table) == FULL_NUM_KEYS
    target = {"tracker": {"maskmem_backbone": shapes}}
    params, report = convert(table, target, memory_encoder_rules(full_cfg), dry_run=True, pending_parts={})
    assert sorted(report.consumed) == sorted(table) and not report.recomputed and not report.pending
    assert report.num_params == report.num_source_elements == FULL_MEMORY_ENCODER_PARAMS
    shape_of = lambda t: jax.tree_util.tree_map(lambda x: x.shape, t)  # noqa: E731
    assert shape_of(params["tracker"]["maskmem_backbone"]) == shape_of(shapes)


def test_rules_with_other_prefixes(full_cfg):
    """The same rules for the instance-interactivity copy of the tracker, into a root-level tree."""
    table = {k.replace("tracker.", "inst_interactive_predictor.model.", 1): v for k, v in official_key_table(PREFIX).items()}
    shapes = nn.meta.unbox(_boxed_params(full_cfg))
    rules = memory_encoder_rules(full_cfg, src="inst_interactive_predictor.model.maskmem_backbone", dst="")
    params, report = convert(table, shapes, rules, dry_run=True, pending_parts={})
    assert len(report.consumed) == FULL_NUM_KEYS
    assert set(params) == {"mask_downsampler", "pix_feat_proj", "fuser", "out_proj"}


def test_wrong_shaped_key_is_named(full_cfg):
    """A dense 7x7 conv where the depthwise one belongs: the error names the key and both shapes."""
    table = official_key_table(PREFIX)
    key = PREFIX + "fuser.layers.1.dwconv.weight"
    table[key] = KeySpec((256, 256, 7, 7), np.dtype("float32"))
    target = {"tracker": {"maskmem_backbone": nn.meta.unbox(_boxed_params(full_cfg))}}
    with pytest.raises(ShapeMismatchError, match=r"key tracker\.maskmem_backbone\.fuser\.layers\.1\.dwconv\.weight: "
                                                  r"expected shape \(256, 1, 7, 7\), got \(256, 256, 7, 7\)"):
        convert(table, target, memory_encoder_rules(full_cfg), dry_run=True, pending_parts={})


def test_every_param_has_logical_axes(tiny_cfg):
    leaves = jax.tree_util.tree_leaves_with_path(
        _boxed_params(tiny_cfg), is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )
    assert len(leaves) == FULL_NUM_KEYS
    for path, leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned), f"{jax.tree_util.keystr(path)} has no logical axes"
        assert len(leaf.names) == leaf.value.ndim, jax.tree_util.keystr(path)


# --------------------------------------------------------------------------------------------
# Input errors


def test_bad_inputs(setup, tiny_cfg):
    _, params, model = setup
    v = {"params": params}
    g, c, s = _grid(tiny_cfg), tiny_cfg.tracker.d_model, tiny_cfg.image_size
    pix_feat = np.zeros((1, g, g, c), np.float32)
    with pytest.raises(ValueError, match=r"masks must have shape \(B, H, W, 1\), got \(1, 1, 224, 224\)"):
        model.apply(v, pix_feat, np.zeros((1, 1, s, s), np.float32))
    with pytest.raises(ValueError, match=r"pix_feat must have shape \(B, H, W, 256\), got \(1, 256, 16, 16\)"):
        model.apply(v, np.zeros((1, c, g, g), np.float32), np.zeros((1, s, s, 1), np.float32))
    with pytest.raises(ValueError, match=r"downsample to \(2, 16, 16, 256\), which does not match pix_feat"):
        model.apply(v, pix_feat, np.zeros((2, s, s, 1), np.float32))
    with pytest.raises(ValueError, match=r"downsample to \(1, 16, 16, 256\), which does not match pix_feat "
                                         r"\(1, 8, 8, 256\)"):
        model.apply(v, np.zeros((1, 8, 8, c), np.float32), np.zeros((1, s, s, 1), np.float32))
