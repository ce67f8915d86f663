"""Fusion encoder, decoder (presence token, boxRPB) and dot-product scoring vs the official modules.

Official modules are built with the official constructors as `sam3.model_builder` builds them, at
the tiny config sizes, with seeded random weights plus `perturb_all_` noise; inputs are random
image tokens with real sine positions and random prompts (batch 2, different padding per element).
The official side is driven like `Sam3Image._run_encoder` / `_run_decoder` /
`_update_scores_and_boxes` (eval). Every output within 1e-5 x max(1, max |official|) max abs error
(the parity CLI's criterion).
"""

from __future__ import annotations

import functools
import types

import numpy as np
import pytest

pytest.importorskip("sam3")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from sam3_jax.layers.core import count_params  # noqa: E402
from sam3_jax.layers.position import sine_position_map  # noqa: E402
from sam3_jax.model.decoder import decoder_from_config  # noqa: E402
from sam3_jax.model.encoder import fusion_encoder_from_config  # noqa: E402
from sam3_jax.model.scoring import dot_product_scoring_from_config  # noqa: E402
from sam3_jax.parity.run import compare  # noqa: E402
from tests.conftest import assert_parity, official_key_table  # noqa: E402

TOL = 1e-5
PROMPT_LEN = 12
# Valid tokens per batch element: a text prefix plus the last (geometry CLS) token.
TEXT_VALID = (4, 9)


# ------------------------------------------------------------------------------------------------
# Official side.


def random_official(cfg, seed: int):
    """Container with `transformer` (TransformerWrapper: encoder + decoder) and `dot_prod_scoring`,
    from the oracle's part builders at cfg's sizes, seeded plus `perturb_all_` noise. The scoring
    head is built before the wrapper (which re-initialises the encoder and decoder from the RNG)."""
    import torch

    from sam3_jax.parity import oracle

    torch.manual_seed(seed)
    encoder, decoder = oracle.build_fusion_encoder(cfg), oracle.build_decoder(cfg)
    scoring = oracle.build_dot_product_scoring(cfg)
    container = torch.nn.Module()
    container.transformer = oracle.build_transformer(cfg, encoder, decoder)
    container.dot_prod_scoring = scoring
    model = container.eval()
    oracle.perturb_all_(model, seed)
    return model


def run_official(model, inputs):
    """Encoder, decoder and heads the way Sam3Image runs them at eval; numpy, batch-first."""
    import torch

    from sam3.model.box_ops import box_cxcywh_to_xyxy
    from sam3.model.model_misc import inverse_sigmoid
    from sam3.model.sam3_image import Sam3Image

    from sam3_jax.parity.oracle import cuda_to_cpu

    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    h, w = inputs["spatial_shape"]
    img_sf = t(inputs["img"]).transpose(0, 1)  # (HW, B, C), as `_get_img_feats` gives it
    pos_sf = t(inputs["img_pos"]).transpose(0, 1)
    prompt = t(inputs["prompt"]).transpose(0, 1)  # (P, B, C)
    mask = t(inputs["prompt_mask"])
    tr = model.transformer
    with torch.no_grad(), cuda_to_cpu():
        enc = tr.encoder(
            src=[img_sf], src_key_padding_mask=None, src_pos=[pos_sf], prompt=prompt,
            prompt_pos=torch.zeros_like(prompt), prompt_key_padding_mask=mask, feat_sizes=[(h, w)],
        )
        # The official glue (`_run_decoder` + `_update_scores_and_boxes`) on a stand-in `self`.
        fake = types.SimpleNamespace(
            transformer=tr, training=False, use_dot_prod_scoring=True, dot_prod_scoring=model.dot_prod_scoring,
            instance_dot_prod_scoring=None, supervise_joint_box_scores=False,
        )
        fake._update_scores_and_boxes = functools.partial(Sam3Image._update_scores_and_boxes, fake)
        glue, _ = Sam3Image._run_decoder(
            fake, pos_embed=enc["pos_embed"], memory=enc["memory"], src_mask=enc["padding_mask"], out={},
            prompt=prompt, prompt_mask=mask, encoder_out=enc,
        )
        # Every layer: the decoder called as `_run_decoder` calls it, heads as `_update_scores_and_boxes`.
        bs = enc["memory"].shape[1]
        hs, refs, presence, presence_feats = tr.decoder(
            tgt=tr.decoder.query_embed.weight.unsqueeze(1).repeat(1, bs, 1), memory=enc["memory"],
            memory_key_padding_mask=enc["padding_mask"], pos=enc["pos_embed"], reference_boxes=None,
            level_start_index=enc["level_start_index"], spatial_shapes=enc["spatial_shapes"],
            valid_ratios=enc["valid_ratios"], tgt_mask=None, memory_text=prompt, text_attention_mask=mask,
            apply_dac=False,
        )
        hs, refs, presence = hs.transpose(1, 2), refs.transpose(1, 2), presence.transpose(1, 2)
        logits = model.dot_prod_scoring(hs, prompt, mask)
        boxes = (inverse_sigmoid(refs) + tr.decoder.bbox_embed(hs)).sigmoid()
        boxes_xyxy = box_cxcywh_to_xyxy(boxes)
    n = lambda x: x.detach().numpy()  # noqa: E731
    return {
        "memory": n(enc["memory"].transpose(0, 1)),
        "pos_embed": n(enc["pos_embed"].transpose(0, 1)),
        "memory_text": n(enc["memory_text"].transpose(0, 1)),
        "hs": n(hs),
        "reference_boxes": n(refs),
        "pred_boxes": n(boxes),
        "pred_boxes_xyxy": n(boxes_xyxy),
        "presence_logits": n(presence),
        "presence_feats": n(presence_feats[0]),
        "logits": n(logits),
        "glue": {k: n(v) for k, v in glue.items() if k in (
            "queries", "pred_logits", "pred_boxes", "pred_boxes_xyxy", "presence_logit_dec", "presence_feats")},
    }


# ------------------------------------------------------------------------------------------------
# JAX side.


def make_inputs(cfg, seed: int, spatial_shape: tuple[int, int], batch: int = 2):
    rng = np.random.default_rng(1000 + seed)
    h, w = spatial_shape
    c = cfg.d_model
    pos = np.asarray(sine_position_map(h, w, c)).reshape(1, h * w, c)
    mask = np.ones((batch, PROMPT_LEN), bool)
    for b in range(batch):
        mask[b, : TEXT_VALID[b % len(TEXT_VALID)]] = False
        mask[b, -1] = False
    return {
        "img": rng.normal(size=(batch, h * w, c)).astype(np.float32),
        "img_pos": np.repeat(pos, batch, axis=0).astype(np.float32),
        "prompt": rng.normal(size=(batch, PROMPT_LEN, c)).astype(np.float32),
        "prompt_mask": mask,
        "spatial_shape": (h, w),
    }


def target_shapes(cfg, spatial_shape=(16, 16), batch=1, prompt_len=PROMPT_LEN) -> dict:
    S = jax.ShapeDtypeStruct
    c, (h, w), q = cfg.d_model, spatial_shape, cfg.num_queries
    tok, pr, pm = S((batch, h * w, c), jnp.float32), S((batch, prompt_len, c), jnp.float32), S(
        (batch, prompt_len), jnp.bool_)
    key = jax.random.key(0)
    enc = jax.eval_shape(fusion_encoder_from_config(cfg).init, key, tok, tok, pr, pm)
    dec_model = decoder_from_config(cfg)
    dec = jax.eval_shape(lambda k, m, p, t, tm: dec_model.init(k, m, p, (h, w), t, tm), key, tok, tok, pr, pm)
    hs = S((cfg.decoder_layers, batch, q, c), jnp.float32)
    sc = jax.eval_shape(dot_product_scoring_from_config(cfg).init, key, hs, pr, pm)
    u = lambda v: nn.meta.unbox(v)["params"]  # noqa: E731
    return {"transformer": {"encoder": u(enc), "decoder": u(dec)}, "dot_prod_scoring": u(sc)}


@functools.lru_cache(maxsize=None)
def jax_forward(cfg_variant: str, spatial_shape: tuple[int, int]):
    from sam3_jax.config import model_config

    cfg = model_config(cfg_variant)
    enc, dec, sc = fusion_encoder_from_config(cfg), decoder_from_config(cfg), dot_product_scoring_from_config(cfg)

    @jax.jit
    def fwd(params, img, img_pos, prompt, prompt_mask):
        memory = enc.apply({"params": params["transformer"]["encoder"]}, img, img_pos, prompt, prompt_mask)
        out = dec.apply(
            {"params": params["transformer"]["decoder"]}, memory, img_pos, spatial_shape, prompt, prompt_mask
        )
        out["memory"] = memory
        out["logits"] = sc.apply({"params": params["dot_prod_scoring"]}, out["hs"], prompt, prompt_mask)
        return out

    return fwd


def convert_official(model, cfg, spatial_shape):
    from sam3_jax.convert.convert import convert
    from sam3_jax.convert.rules_transformer import transformer_rules
    from sam3_jax.parity.oracle import state_dict_numpy

    params, report = convert(state_dict_numpy(model), target_shapes(cfg, spatial_shape), transformer_rules(cfg))
    assert not report.pending
    return params


# ------------------------------------------------------------------------------------------------
# Tests.


def _max_errors(cfg, seed, spatial_shape, tweak=None):
    h, w = spatial_shape
    model = random_official(cfg, seed)
    if tweak is not None:
        tweak(model)
    inputs = make_inputs(cfg, seed, spatial_shape)
    ref = run_official(model, inputs)
    params = convert_official(model, cfg, spatial_shape)
    out = jax_forward(cfg.variant, spatial_shape)(
        params, inputs["img"], inputs["img_pos"], inputs["prompt"], inputs["prompt_mask"]
    )
    out = jax.tree_util.tree_map(np.asarray, out)
    # The official decoder's memory position is the encoder's `pos_embed` = the image position map.
    np.testing.assert_array_equal(ref["pos_embed"], inputs["img_pos"])
    np.testing.assert_array_equal(ref["memory_text"], inputs["prompt"])
    L, B, Q = cfg.decoder_layers, 2, cfg.num_queries
    shapes = {
        "memory": (B, h * w, cfg.d_model), "hs": (L, B, Q, cfg.d_model), "reference_boxes": (L, B, Q, 4),
        "pred_boxes": (L, B, Q, 4), "pred_boxes_xyxy": (L, B, Q, 4), "presence_logits": (L, B, 1),
        "presence_feats": (B, cfg.d_model), "logits": (L, B, Q, 1),
    }
    errors = {}
    for name, shape in shapes.items():
        assert out[name].shape == ref[name].shape == shape, (name, out[name].shape, ref[name].shape)
        errors[name] = compare(name, out[name], ref[name], TOL)
    # The official glue's last-layer outputs.
    g = ref["glue"]
    last = {
        "queries": out["hs"][-1], "pred_logits": out["logits"][-1], "pred_boxes": out["pred_boxes"][-1],
        "pred_boxes_xyxy": out["pred_boxes_xyxy"][-1], "presence_logit_dec": out["presence_logits"][-1],
        "presence_feats": out["presence_feats"][None],
    }
    assert sorted(g) == sorted(last)
    for name, ours in last.items():
        assert ours.shape == g[name].shape, (name, ours.shape, g[name].shape)
        errors[f"glue.{name}"] = compare(f"glue.{name}", ours, g[name], TOL)
    # Sanity: the inputs exercise the boxes, the padding and the presence path.
    # Sanity: the boxes are refined between layers and the scores vary.
    assert np.max(np.abs(ref["reference_boxes"][1] - ref["reference_boxes"][0])) > 0.01
    assert np.ptp(ref["logits"]) > 0.2
    return errors, ref


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_transformer_matches_official(tiny_cfg, seed):
    assert tiny_cfg.image_size // tiny_cfg.vit.patch_size == 16  # the official coordinate cache size
    errors, _ = _max_errors(tiny_cfg, seed, (16, 16))
    bad = {k: (r.max_abs, r.scale) for k, r in errors.items() if not r.ok}
    assert not bad, f"(max abs error, max |official|) beyond {TOL} x max(1, max |official|): {bad}"


def _stress_weights(model) -> None:
    """Scales a few official weights so the edge cases are exercised: initial boxes within 1e-3 of
    0 / 1 (inverse_sigmoid's eps clamp), large box updates, strong boxRPB biases, presence logits
    beyond the (no-op) +-10 clamp, class logits beyond the +-12 clamp."""
    import torch

    dec = model.transformer.decoder
    with torch.no_grad():
        dec.reference_points.weight.mul_(5.0)
        dec.bbox_embed.layers[2].weight.mul_(10.0)
        dec.boxRPB_embed_x.layers[1].weight.mul_(5.0)
        dec.boxRPB_embed_y.layers[1].weight.mul_(5.0)
        dec.presence_token_head.layers[2].bias.add_(30.0)
        # A common offset on both projections (16 * 0.87^2 = 12.1 on every logit) rather than a
        # large weight scale, which would only scale up the fp32 rounding of hs.
        model.dot_prod_scoring.hs_proj.bias.add_(0.87)
        model.dot_prod_scoring.prompt_proj.bias.add_(0.87)


def test_transformer_matches_official_non_square_grid_and_edge_cases(tiny_cfg):
    """A 12x20 memory (official coordinate-cache miss path) checks the H / W roles of boxRPB;
    scaled weights exercise the clamps (see `_stress_weights`)."""
    errors, ref = _max_errors(tiny_cfg, 5, (12, 20), tweak=_stress_weights)
    bad = {k: (r.max_abs, r.scale) for k, r in errors.items() if not r.ok}
    assert not bad, f"(max abs error, max |official|) beyond {TOL} x max(1, max |official|): {bad}"
    refs0 = ref["reference_boxes"][0]
    assert np.min(refs0) < 1e-3 and np.max(refs0) > 1 - 1e-3
    assert np.max(np.abs(ref["presence_logits"])) > 10.5  # not clamped
    assert np.max(ref["logits"]) == 12.0 and np.min(ref["logits"]) < 11.9  # clamped, not everywhere


def test_prompt_padding_is_ignored(tiny_cfg):
    """Changing padded prompt tokens changes nothing; changing a valid one changes the outputs."""
    shapes = target_shapes(tiny_cfg)
    params = jax.tree_util.tree_map(
        lambda s: jax.random.normal(jax.random.key(s.size), s.shape, s.dtype) * 0.05, shapes
    )
    inputs = make_inputs(tiny_cfg, 0, (16, 16))
    fwd = jax_forward(tiny_cfg.variant, (16, 16))
    args = (inputs["img"], inputs["img_pos"], inputs["prompt"], inputs["prompt_mask"])
    base = fwd(params, *args)
    noisy = np.where(inputs["prompt_mask"][..., None], 100.0, 0.0).astype(np.float32) + inputs["prompt"]
    same = fwd(params, args[0], args[1], noisy, args[3])
    for k in ("memory", "hs", "pred_boxes", "presence_logits", "logits"):
        np.testing.assert_allclose(np.asarray(same[k]), np.asarray(base[k]), atol=1e-5, rtol=0, err_msg=k)
    changed = inputs["prompt"].copy()
    changed[0, 0] += 1.0
    other = fwd(params, args[0], args[1], changed, args[3])
    assert np.max(np.abs(np.asarray(other["logits"][:, 0]) - np.asarray(base["logits"][:, 0]))) > 1e-4
    np.testing.assert_allclose(np.asarray(other["logits"][:, 1]), np.asarray(base["logits"][:, 1]), atol=1e-6)


def test_cached_first_self_attention_gives_the_same_memory(tiny_cfg):
    """The first layer's self-attention computed once per image (`self_attend`) and passed as
    `self_attended` gives the memory of the full call, for each of several prompts; a cache of
    another image does not."""
    shapes = target_shapes(tiny_cfg, batch=2)
    params = jax.tree_util.tree_map(
        lambda s: jax.random.normal(jax.random.key(s.size), s.shape, s.dtype) * 0.05, shapes
    )["transformer"]["encoder"]
    enc = fusion_encoder_from_config(tiny_cfg)
    inputs = make_inputs(tiny_cfg, 0, (16, 16), batch=2)
    img, pos = inputs["img"], inputs["img_pos"]
    full = jax.jit(lambda p, *a: enc.apply({"params": p}, *a))
    cached_fn = jax.jit(lambda p, *a, cache: enc.apply({"params": p}, *a, self_attended=cache))
    cache = jax.jit(lambda p, i, q: enc.apply({"params": p}, i, q, method=type(enc).self_attend))(params, img, pos)
    assert cache.shape == img.shape
    rng = np.random.default_rng(1)
    for _ in range(2):
        prompt = rng.normal(size=inputs["prompt"].shape).astype(np.float32)
        ref = np.asarray(full(params, img, pos, prompt, inputs["prompt_mask"]))
        got = np.asarray(cached_fn(params, img, pos, prompt, inputs["prompt_mask"], cache=cache))
        np.testing.assert_allclose(got, ref, atol=1e-6, rtol=0)
    other = np.asarray(cached_fn(params, img, pos, prompt, inputs["prompt_mask"], cache=cache[::-1]))
    assert np.max(np.abs(other - ref)) > 1e-3
    with pytest.raises(ValueError, match="self_attended must have img's shape"):
        cached_fn(params, img, pos, prompt, inputs["prompt_mask"], cache=cache[:1])


def test_full_size_parameter_counts(full_cfg):
    shapes = target_shapes(full_cfg, spatial_shape=(72, 72), prompt_len=33)
    assert count_params(shapes["transformer"]["encoder"]) == 9_472_512
    assert count_params(shapes["transformer"]["decoder"]) == 11_575_093
    assert count_params(shapes["dot_prod_scoring"]) == 1_182_976
    # The shared heads are not stacked; only the layers are.
    dec = shapes["transformer"]["decoder"]
    assert dec["layers"]["linear1"]["kernel"].shape == (6, 256, 2048)
    assert dec["bbox_embed"]["layers"]["2"]["kernel"].shape == (256, 4)
    assert dec["boxRPB_embed_x"]["layers"]["1"]["kernel"].shape == (256, 8)


def test_every_param_has_logical_axes(tiny_cfg):
    S = jax.ShapeDtypeStruct
    c, q = tiny_cfg.d_model, tiny_cfg.num_queries
    tok, pr, pm = S((1, 256, c), jnp.float32), S((1, 5, c), jnp.float32), S((1, 5), jnp.bool_)
    key = jax.random.key(0)
    dec = decoder_from_config(tiny_cfg)
    trees = [
        jax.eval_shape(fusion_encoder_from_config(tiny_cfg).init, key, tok, tok, pr, pm),
        jax.eval_shape(lambda k, m, p, t, tm: dec.init(k, m, p, (16, 16), t, tm), key, tok, tok, pr, pm),
        jax.eval_shape(dot_product_scoring_from_config(tiny_cfg).init, key, S((2, 1, q, c), jnp.float32), pr, pm),
    ]
    for tree in trees:
        leaves = jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
        assert leaves
        for leaf in leaves:
            assert isinstance(leaf, nn.LogicallyPartitioned) and len(leaf.names) == leaf.value.ndim, leaf


def test_dry_run_conversion_of_official_keys(full_cfg):
    from sam3_jax.convert.convert import convert
    from sam3_jax.convert.rules_transformer import transformer_rules

    state = official_key_table(("detector.transformer.", "detector.dot_prod_scoring."))
    counts = {p: sum(k.startswith(f"detector.{p}.") for k in state) for p in (
        "transformer.encoder", "transformer.decoder", "dot_prod_scoring")}
    assert counts == {"transformer.encoder": 108, "transformer.decoder": 175, "dot_prod_scoring": 10}
    shapes = target_shapes(full_cfg, spatial_shape=(72, 72), prompt_len=33)
    params, report = convert(state, shapes, transformer_rules(full_cfg), dry_run=True)
    assert len(report.consumed) == 108 + 175 + 10 and not report.pending and not report.recomputed
    assert report.num_params == 9_472_512 + 11_575_093 + 1_182_976
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(shapes)


def test_bfloat16_compute_runs(tiny_cfg):
    """Compute in bf16 (FFN of the decoder in fp32), params fp32: finite outputs, sane dtypes."""
    cfg = tiny_cfg.copy_and_resolve_references()
    cfg.dtype = "bfloat16"
    shapes = target_shapes(tiny_cfg)
    params = jax.tree_util.tree_map(
        lambda s: jax.random.normal(jax.random.key(s.size % 997), s.shape, s.dtype) * 0.05, shapes
    )
    inputs = make_inputs(tiny_cfg, 0, (16, 16))
    enc, dec, sc = fusion_encoder_from_config(cfg), decoder_from_config(cfg), dot_product_scoring_from_config(cfg)
    args = (inputs["img"], inputs["img_pos"], inputs["prompt"], inputs["prompt_mask"])

    @jax.jit
    def fwd(params, img, img_pos, prompt, prompt_mask):
        memory = enc.apply({"params": params["transformer"]["encoder"]}, img, img_pos, prompt, prompt_mask)
        out = dec.apply({"params": params["transformer"]["decoder"]}, memory, img_pos, (16, 16), prompt, prompt_mask)
        return memory, out, sc.apply({"params": params["dot_prod_scoring"]}, out["hs"], prompt, prompt_mask)

    memory, out, logits = fwd(params, *args)
    assert memory.dtype == jnp.bfloat16 and out["hs"].dtype == jnp.bfloat16
    assert out["pred_boxes"].dtype == jnp.float32 and out["reference_boxes"].dtype == jnp.float32
    for x in (memory, out["hs"], out["pred_boxes"], out["presence_logits"], logits):
        assert bool(jnp.all(jnp.isfinite(x.astype(jnp.float32))))


def _official_decoder_16x16(dec, inputs, batch, apply_dac):
    """The official decoder on a 16x16 memory as `_run_decoder` calls it -> batch-first (hs, refs, presence)."""
    import torch

    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    hs, refs, presence, _ = dec(
        tgt=dec.query_embed.weight.unsqueeze(1).repeat(1, batch, 1), memory=t(inputs["img"]).transpose(0, 1),
        memory_key_padding_mask=None, pos=t(inputs["img_pos"]).transpose(0, 1), reference_boxes=None,
        level_start_index=None, spatial_shapes=torch.tensor([[16, 16]]), valid_ratios=torch.ones(batch, 1, 2),
        tgt_mask=None, memory_text=t(inputs["prompt"]).transpose(0, 1), text_attention_mask=t(inputs["prompt_mask"]),
        apply_dac=apply_dac,
    )
    return hs.transpose(1, 2), refs.transpose(1, 2), presence.transpose(1, 2)


def test_box_gradients_match_official(tiny_cfg):
    """Training path: the refined boxes feed the next layer gradient-stopped (official `.detach()`),
    while the reported reference boxes and predicted boxes keep their gradients."""
    import torch

    from sam3.model.model_misc import inverse_sigmoid

    from sam3_jax.parity.oracle import cuda_to_cpu

    model = random_official(tiny_cfg, 3)
    inputs = make_inputs(tiny_cfg, 3, (16, 16))
    params = convert_official(model, tiny_cfg, (16, 16))["transformer"]["decoder"]
    L, B, Q = tiny_cfg.decoder_layers, 2, tiny_cfg.num_queries
    rng = np.random.default_rng(0)
    w_box, w_ref = (rng.normal(size=(L, B, Q, 4)).astype(np.float32) for _ in range(2))

    dec = model.transformer.decoder
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    with cuda_to_cpu():
        hs, refs, _ = _official_decoder_16x16(dec, inputs, B, apply_dac=False)
        boxes = (inverse_sigmoid(refs) + dec.bbox_embed(hs)).sigmoid()
        ((boxes * t(w_box)).sum() + (refs * t(w_ref)).sum()).backward()
    expected = {
        ("reference_points", "embedding"): dec.reference_points.weight.grad.numpy(),
        ("bbox_embed", "layers", "2", "kernel"): dec.bbox_embed.layers[2].weight.grad.numpy().T,
        ("ref_point_head", "layers", "0", "kernel"): dec.ref_point_head.layers[0].weight.grad.numpy().T,
    }

    model_jax = decoder_from_config(tiny_cfg)

    def loss(p):
        o = model_jax.apply({"params": p}, inputs["img"], inputs["img_pos"], (16, 16), inputs["prompt"],
                            inputs["prompt_mask"])
        return (o["pred_boxes"] * w_box).sum() + (o["reference_boxes"] * w_ref).sum()

    grads = jax.jit(jax.grad(loss))(params)
    for path, ref in expected.items():
        ours = grads
        for k in path:
            ours = ours[k]
        assert_parity(ours, ref, TOL, "/".join(path))


def test_dac_decoder_matches_official(tiny_cfg):
    """The training path with DAC: 2Q queries ([o2o; o2m]), self-attention over [presence; o2o] only,
    equal to the official decoder called with apply_dac=True. No o2m query ever reaches an o2o one,
    so the o2o half equals the eval (no-DAC) decoder's output."""
    import torch

    from sam3_jax.parity.oracle import cuda_to_cpu

    model = random_official(tiny_cfg, 4)
    inputs = make_inputs(tiny_cfg, 4, (16, 16))
    params = convert_official(model, tiny_cfg, (16, 16))["transformer"]["decoder"]
    L, B, Q = tiny_cfg.decoder_layers, 2, tiny_cfg.num_queries
    with torch.no_grad(), cuda_to_cpu():
        hs, refs, presence = _official_decoder_16x16(model.transformer.decoder, inputs, B, apply_dac=True)
    ref = {"hs": hs.numpy(), "reference_boxes": refs.numpy(), "presence_logits": presence.numpy()}
    run = lambda dac: jax.jit(lambda p: decoder_from_config(tiny_cfg).apply(  # noqa: E731
        {"params": p}, inputs["img"], inputs["img_pos"], (16, 16), inputs["prompt"], inputs["prompt_mask"], dac=dac))
    ours = jax.tree_util.tree_map(np.asarray, run(True)(params))
    assert ours["hs"].shape == ref["hs"].shape == (L, B, 2 * Q, tiny_cfg.d_model)
    for k, v in ref.items():
        assert_parity(ours[k], v, TOL, k)
    # the o2m half really differs from the o2o half (it skipped self-attention) ...
    assert np.max(np.abs(ours["hs"][:, :, :Q] - ours["hs"][:, :, Q:])) > 1e-2
    # ... and the o2o half is the eval decoder's output
    plain = jax.tree_util.tree_map(np.asarray, run(False)(params))
    np.testing.assert_allclose(ours["hs"][:, :, :Q], plain["hs"], atol=TOL, rtol=0)


@pytest.mark.parametrize("num_layers,residual,out_norm", [(1, False, False), (2, True, True), (3, False, True)])
def test_mlp_matches_official(num_layers, residual, out_norm):
    import torch
    from sam3.model.model_misc import MLP as OfficialMLP

    from sam3_jax.convert.convert import convert
    from sam3_jax.convert.rules_transformer import mlp_rules
    from sam3_jax.model.mlp import MLP
    from sam3_jax.parity.oracle import perturb_all_, state_dict_numpy

    torch.manual_seed(num_layers)
    ref = OfficialMLP(6, 10, 6, num_layers, dropout=0.1, residual=residual,
                      out_norm=torch.nn.LayerNorm(6) if out_norm else None).eval()
    perturb_all_(ref, num_layers)
    mlp = MLP(6, 10, 6, num_layers, residual=residual, out_norm=out_norm)
    x = np.random.default_rng(num_layers).normal(size=(2, 3, 6)).astype(np.float32)
    shapes = nn.meta.unbox(jax.eval_shape(mlp.init, jax.random.key(0), x))["params"]
    state = {f"m.{k}": v for k, v in state_dict_numpy(ref).items()}
    params, _ = convert(state, {"m": shapes}, mlp_rules("m", "m", num_layers, out_norm=out_norm))
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(mlp.apply({"params": params["m"]}, x)), expected, atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="residual"):
        MLP(6, 10, 4, 2, residual=True).init(jax.random.key(0), x)
