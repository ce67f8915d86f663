"""Numerical parity of the basic layers (sam3_jax.layers, ViT windowing, layout transforms).

Every layer is compared in float32 on seeded random inputs against its PyTorch equivalent (torch
built-ins, or the official `sam3` functions where SAM 3 defines its own). Tests that need torch or
the official package are skipped when those are not installed.
"""

from __future__ import annotations

import functools
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from sam3_jax.convert import layouts
from sam3_jax.layers import core, stack
from sam3_jax.layers.attention import MultiHeadAttention, dot_product_attention
from sam3_jax.layers.position import sine_position_map
from sam3_jax.layers.rope import apply_rope, axial_rope_angles, complex_table, rope_cos_sin
from sam3_jax.model.vit import window_partition, window_unpartition

jax.config.update("jax_default_matmul_precision", "highest")

torch = pytest.importorskip("torch")


def _vitdet():
    return pytest.importorskip("sam3.model.vitdet")


def _position_encoding():
    return pytest.importorskip("sam3.model.position_encoding")


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _randn(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _t(x: np.ndarray) -> "torch.Tensor":
    return torch.from_numpy(np.ascontiguousarray(x))


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _close(actual, expected, *, atol: float, rtol: float = 0.0) -> float:
    """Asserts closeness and returns the max abs error (so failures print it)."""
    a, e = _np(actual), _np(expected)
    assert a.shape == e.shape, (a.shape, e.shape)
    err = float(np.max(np.abs(a.astype(np.float64) - e.astype(np.float64)))) if a.size else 0.0
    np.testing.assert_allclose(a, e, atol=atol, rtol=rtol)
    return err


def _unboxed_shapes(module: nn.Module, *args, **kwargs) -> dict[str, tuple[int, ...]]:
    """Flat {'a/b': shape} of the module's params, from an abstract init."""
    abstract = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args, **kwargs))
    params = nn.meta.unbox(abstract)["params"]
    return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(params, sep="/").items()}


def _convert(layout: layouts.Layout, torch_leaves: dict[str, np.ndarray], dst_shapes: dict[str, tuple]):
    """Applies a Layout to a dict of official tensors, returns the nested Flax params dict."""
    flat = {}
    for leaf in layout.leaves:
        if leaf.recomputed:
            continue
        shapes = [dst_shapes[d] for d in leaf.dst]
        assert [tuple(torch_leaves[s].shape) for s in leaf.src] == [tuple(s) for s in leaf.src_shapes(shapes)]
        outs = leaf.forward([torch_leaves[s] for s in leaf.src], shapes)
        for d, o in zip(leaf.dst, outs):
            assert tuple(o.shape) == tuple(dst_shapes[d]), (d, o.shape, dst_shapes[d])
            flat[d] = jnp.asarray(o)
    assert set(flat) == set(dst_shapes), (set(flat), set(dst_shapes))
    return traverse_util.unflatten_dict(flat, sep="/")


def _state(module: "torch.nn.Module") -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# 1. GELU
# ---------------------------------------------------------------------------------------------


def test_gelu_is_exact_erf():
    x = np.concatenate([np.linspace(-8, 8, 4001, dtype=np.float32), _randn(_rng(0), 4096, scale=3)])
    ours = core.gelu(jnp.asarray(x))
    ref = torch.nn.GELU()(_t(x))
    _close(ours, ref, atol=2e-6)
    tanh_ref = torch.nn.GELU(approximate="tanh")(_t(x))
    # The tanh form differs by up to ~5e-4; a tanh-based gelu would fail the comparison above.
    assert float(np.max(np.abs(_np(ours) - _np(tanh_ref)))) > 1e-4
    # bf16: computed in fp32 and rounded once, as torch does: at most one bf16 ulp apart (where the
    # two erf implementations straddle a rounding boundary, 7 % of these points) or 1e-6 in the
    # negative tail, where 1 + erf cancels in both; jax.nn.gelu's bf16 path, which rounds every
    # intermediate to bf16, differs at 43 % of them.
    half = np.asarray(core.gelu(jnp.asarray(x, jnp.bfloat16)).astype(jnp.float32))
    ref16 = torch.nn.GELU()(_t(x).to(torch.bfloat16)).float().numpy()
    tol = np.maximum(np.abs(ref16) * 2.0 ** -7, 1e-6)
    assert np.all(np.abs(half - ref16) <= tol), float(np.max(np.abs(half - ref16) / tol))
    assert np.mean(half != ref16) < 0.1


# ---------------------------------------------------------------------------------------------
# 2. LayerNorm
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0.0, 100.0])
def test_layernorm_matches_torch(offset):
    d = 128
    rng = _rng(1)
    tln = torch.nn.LayerNorm(d)
    assert tln.eps == core.TORCH_LN_EPS
    with torch.no_grad():
        tln.weight.copy_(_t(_randn(rng, d) + 1.0))
        tln.bias.copy_(_t(_randn(rng, d)))
    # Inputs on a 2^-6 grid with d a power of two: the fp32 row sums and means are exact, so the only
    # rounding left is in the variance; without this the fp32 mean of values ~100 alone is off by
    # ~1e-5 (ulp(100) = 7.6e-6), in any implementation.
    x = np.round(_randn(rng, 2, 7, d) * 64) / 64 + np.float32(offset)
    x = x.astype(np.float32)

    ln = core.LayerNorm()
    variables = ln.init(jax.random.PRNGKey(0), jnp.asarray(x))
    shapes = {k: tuple(v.shape) for k, v in
              traverse_util.flatten_dict(nn.meta.unbox(variables)["params"], sep="/").items()}
    params = _convert(layouts.LAYERNORM, _state(tln), shapes)
    ours = ln.apply({"params": params}, jnp.asarray(x))
    # Reference: the same torch module in float64 on the same (fp32-representable) inputs.
    ref64 = tln.double()(_t(x).double())
    _close(ours, ref64, atol=3e-6)
    # torch's own fp32 CPU kernel (single-pass Welford moments) is off by ~3e-5 at offset 100.
    ref32 = tln.float()(_t(x))
    _close(ours, ref32, atol=1e-4 if offset else 5e-6)
    if offset:
        # The offset case discriminates: a one-pass E[x^2] - E[x]^2 variance is off by ~4e-3.
        fast = nn.LayerNorm(epsilon=1e-5, use_fast_variance=True).apply({"params": params}, jnp.asarray(x))
        assert float(np.max(np.abs(_np(fast) - _np(ref64)))) > 1e-3


# ---------------------------------------------------------------------------------------------
# 3-5. Conv, ConvTranspose, max pool
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cin,cout,k,stride,pad,bias,hw",
    [
        (8, 16, 1, 1, 0, True, (9, 11)),
        (8, 12, 3, 1, 1, True, (10, 7)),
        (3, 32, 14, 14, 0, False, (56, 42)),
        (3, 16, 14, 14, 0, False, (30, 29)),  # non-multiple of the stride: floor, like torch
    ],
)
def test_conv_matches_torch(cin, cout, k, stride, pad, bias, hw):
    rng = _rng(3)
    tconv = torch.nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=bias)
    with torch.no_grad():
        for p in tconv.parameters():
            p.copy_(_t(_randn(rng, *p.shape, scale=0.2)))
    x = _randn(rng, 2, *hw, cin)  # NHWC

    conv = core.Conv(cout, k, stride=stride, padding=pad, use_bias=bias)
    shapes = _unboxed_shapes(conv, jnp.asarray(x))
    state = _state(tconv)
    layout = layouts.CONV if bias else layouts.Layout("Conv", layouts.CONV.leaves[:1])
    params = _convert(layout, state, shapes)
    ours = conv.apply({"params": params}, jnp.asarray(x))
    ref = tconv(_t(x.transpose(0, 3, 1, 2))).permute(0, 2, 3, 1)
    _close(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cin,cout,s,bias", [(16, 8, 2, True), (12, 6, 4, True), (8, 4, 2, False)])
def test_conv_transpose_matches_torch(cin, cout, s, bias):
    rng = _rng(4)
    tconv = torch.nn.ConvTranspose2d(cin, cout, kernel_size=s, stride=s, bias=bias)
    with torch.no_grad():
        for p in tconv.parameters():
            p.copy_(_t(_randn(rng, *p.shape, scale=0.3)))
    x = _randn(rng, 2, 5, 7, cin)

    mod = core.ConvTranspose(cout, stride=s, use_bias=bias)
    shapes = _unboxed_shapes(mod, jnp.asarray(x))
    layout = layouts.CONV_TRANSPOSE if bias else layouts.Layout("CT", layouts.CONV_TRANSPOSE.leaves[:1])
    params = _convert(layout, _state(tconv), shapes)
    ours = mod.apply({"params": params}, jnp.asarray(x))
    ref = tconv(_t(x.transpose(0, 3, 1, 2))).permute(0, 2, 3, 1)
    assert ours.shape == (2, 5 * s, 7 * s, cout)
    _close(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hw", [(8, 8), (7, 9), (3, 2)])
def test_max_pool_2x2_matches_torch(hw):
    x = _randn(_rng(5), 2, *hw, 3)
    ours = core.max_pool_2x2(jnp.asarray(x))
    ref = torch.nn.MaxPool2d(2, 2)(_t(x.transpose(0, 3, 1, 2))).permute(0, 2, 3, 1)
    assert ours.shape == tuple(ref.shape)
    _close(ours, ref, atol=0.0)


# ---------------------------------------------------------------------------------------------
# 6. RoPE
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim,ex,ey,scale", [(64, 24, 24, 1.0), (64, 72, 72, 24 / 72), (16, 8, 8, 1.0)])
def test_rope_table_matches_official(dim, ex, ey, scale):
    vitdet = _vitdet()
    ref = vitdet.compute_axial_cis(dim=dim, end_x=ex, end_y=ey, theta=10000.0, scale_pos=scale)
    angles = axial_rope_angles(dim, ex, ey, theta=10000.0, scale=scale)
    assert angles.shape == (ex * ey, dim // 2) and angles.dtype == jnp.float32
    # The angles themselves (exactly what torch.polar rotates by); pow may differ by ~1 ulp.
    ref_angles = np.angle(_np(ref).astype(np.complex128))
    ours_wrapped = np.angle(np.exp(1j * np.asarray(angles, np.float64)))
    _close(np.angle(np.exp(1j * (ours_wrapped - ref_angles))), np.zeros_like(ref_angles), atol=1e-5)
    table = complex_table(np.asarray(angles))
    assert table.dtype == np.complex64
    _close(table.real, _np(ref).real, atol=1e-5)
    _close(table.imag, _np(ref).imag, atol=1e-5)
    cos, sin = rope_cos_sin(angles)
    _close(cos, _np(ref).real, atol=1e-5)
    _close(sin, _np(ref).imag, atol=1e-5)


@pytest.mark.parametrize("dim,ex,ey,scale", [(64, 8, 8, 1.0), (16, 6, 10, 0.5)])
def test_apply_rope_matches_official(dim, ex, ey, scale):
    vitdet = _vitdet()
    rng = _rng(6)
    b, h, t = 2, 3, ex * ey
    q = _randn(rng, b, t, h, dim)  # ours: (B, T, H, D)
    k = _randn(rng, b, t, h, dim)
    freqs = vitdet.compute_axial_cis(dim=dim, end_x=ex, end_y=ey, scale_pos=scale)
    ref_q, ref_k = vitdet.apply_rotary_enc(
        _t(q.transpose(0, 2, 1, 3)), _t(k.transpose(0, 2, 1, 3)), freqs_cis=freqs)
    ref_q, ref_k = _np(ref_q).transpose(0, 2, 1, 3), _np(ref_k).transpose(0, 2, 1, 3)

    # Rotation alone, with the official table: only the complex multiply differs.
    c, s = jnp.asarray(_np(freqs).real), jnp.asarray(_np(freqs).imag)
    _close(apply_rope(jnp.asarray(q), c, s), ref_q, atol=2e-6)
    _close(apply_rope(jnp.asarray(k), c, s), ref_k, atol=2e-6)
    # Full pipeline: our angles -> cos/sin -> rotation.
    cos, sin = rope_cos_sin(axial_rope_angles(dim, ex, ey, scale=scale))
    _close(apply_rope(jnp.asarray(q), cos, sin), ref_q, atol=1e-5)
    _close(apply_rope(jnp.asarray(k), cos, sin), ref_k, atol=1e-5)
    # Norm-preserving, and the identity at token 0 (position (0, 0)).
    out = np.asarray(apply_rope(jnp.asarray(q), cos, sin))
    _close(np.linalg.norm(out, axis=-1), np.linalg.norm(q, axis=-1), atol=1e-5)
    _close(out[:, 0], q[:, 0], atol=0.0)


def test_apply_rope_keeps_dtype():
    cos, sin = rope_cos_sin(axial_rope_angles(16, 4, 4))
    x = jnp.ones((1, 16, 2, 16), jnp.bfloat16)
    assert apply_rope(x, cos, sin).dtype == jnp.bfloat16


def test_bf16_products_accumulate_in_fp32():
    """On the CPU backend, bf16 Dense / einsum / conv products are computed with fp32 accumulation
    (a dot with bf16 operands and an fp32 result, XLA:CPU's fast bf16 path) and rounded once to
    bf16; fp32 products are plain dots."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((4, 300)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((300, 5)), jnp.bfloat16)
    want = (np.asarray(x, np.float64) @ np.asarray(w, np.float64)).astype(np.float32)
    got = core.einsum("ic,co->io", x, w)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=2 ** -8, atol=1e-6)
    dense = core.Dense(5, (None, None), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    params = {"kernel": w, "bias": jnp.zeros((5,), jnp.bfloat16)}
    y = dense.apply({"params": params}, x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32), want, rtol=2 ** -8, atol=1e-6)
    conv = core.Conv(5, 3, padding=1, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    img = jnp.asarray(rng.standard_normal((1, 6, 6, 4)), jnp.bfloat16)
    cparams = conv.init(jax.random.PRNGKey(0), img)
    for op, fn, args in (("dot_general", lambda a, b: core.einsum("ic,co->io", a, b), (x, w)),
                         ("dot_general", lambda p, a: dense.apply({"params": p}, a), (params, x)),
                         ("convolution", lambda p, a: conv.apply(p, a), (cparams, img))):
        hlo = jax.jit(fn).lower(*args).as_text()
        types = [ln.rsplit(" : (", 1)[1] for ln in hlo.splitlines() if f"stablehlo.{op}" in ln]
        assert types and all(re.fullmatch(r"tensor<\S+bf16>, tensor<\S+bf16>\) -> tensor<\S+f32>", t)
                             for t in types), hlo
    f32 = jax.jit(lambda a, b: core.einsum("ic,co->io", a, b)).lower(x.astype(jnp.float32), w.astype(jnp.float32))
    assert "preferred" not in f32.as_text() and "bf16" not in f32.as_text()


def test_rope_rejects_bad_dim():
    with pytest.raises(ValueError):
        axial_rope_angles(18, 4, 4)


# ---------------------------------------------------------------------------------------------
# 7. Sine position map
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("h,w,c", [(8, 8, 256), (16, 12, 256), (72, 72, 256), (16, 12, 64)])
def test_sine_position_map_matches_official(h, w, c):
    pe = _position_encoding()
    mod = pe.PositionEmbeddingSine(num_pos_feats=c, normalize=True, precompute_resolution=None)
    ref = mod(torch.zeros(1, 1, h, w))  # (1, C, h, w)
    ours = sine_position_map(h, w, c)
    assert ours.shape == (h, w, c) and ours.dtype == jnp.float32
    _close(ours, _np(ref)[0].transpose(1, 2, 0), atol=2e-6)


def test_sine_position_map_rejects_odd_features():
    with pytest.raises(ValueError):
        sine_position_map(4, 4, 63)


# ---------------------------------------------------------------------------------------------
# 8. dot_product_attention
# ---------------------------------------------------------------------------------------------


def _sdpa_ref(q, k, v, **kw):
    out = torch.nn.functional.scaled_dot_product_attention(
        _t(q.transpose(0, 2, 1, 3)), _t(k.transpose(0, 2, 1, 3)), _t(v.transpose(0, 2, 1, 3)), **kw)
    return _np(out).transpose(0, 2, 1, 3)


@pytest.mark.parametrize("tq,tk", [(9, 9), (5, 13)])
def test_dot_product_attention_matches_sdpa(tq, tk):
    rng = _rng(7)
    b, n, d = 2, 4, 16
    q, k, v = _randn(rng, b, tq, n, d), _randn(rng, b, tk, n, d), _randn(rng, b, tk, n, d)
    ours = dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))
    _close(ours, _sdpa_ref(q, k, v), atol=2e-6)

    # Boolean mask (True = attend), per batch and query, broadcast over heads; every row keeps >=1 key.
    mask = rng.random((b, 1, tq, tk)) > 0.5
    mask[..., 0] = True
    ours = dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask=jnp.asarray(mask))
    _close(ours, _sdpa_ref(q, k, v, attn_mask=_t(mask)), atol=2e-6)

    # Additive float bias.
    bias = _randn(rng, 1, n, tq, tk)
    ours = dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), bias=jnp.asarray(bias))
    _close(ours, _sdpa_ref(q, k, v, attn_mask=_t(bias)), atol=2e-6)


def test_full_sequence_lengths_keeps_attention_unchanged():
    """The cuDNN path spells a key-padding bias (B, 1, 1, Tk) / mask (B, Tk) out to (.., Tq, Tk):
    the result on XLA is the same attention."""
    from sam3_jax.layers.attention import full_sequence_lengths

    rng = _rng(9)
    b, tq, tk, n, d = 2, 5, 7, 4, 8
    q, k, v = (jnp.asarray(_randn(rng, b, t, n, d)) for t in (tq, tk, tk))
    bias = jnp.asarray(_randn(rng, b, 1, 1, tk))
    mask = jnp.asarray(rng.random((1, tk)) > 0.3).at[:, 0].set(True)
    assert full_sequence_lengths(bias, tq, tk).shape == (b, 1, tq, tk)
    assert full_sequence_lengths(mask, tq, tk).shape == (1, 1, tq, tk)
    assert full_sequence_lengths(None, tq, tk) is None
    want = dot_product_attention(q, k, v, bias=bias, mask=mask)
    got = dot_product_attention(q, k, v, bias=full_sequence_lengths(bias, tq, tk),
                                mask=full_sequence_lengths(mask, tq, tk))
    _close(got, want, atol=1e-7)


def test_dot_product_attention_causal_matches_sdpa():
    rng = _rng(8)
    b, t, n, d = 2, 11, 3, 8
    q, k, v = _randn(rng, b, t, n, d), _randn(rng, b, t, n, d), _randn(rng, b, t, n, d)
    ours = dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), is_causal=True)
    ref = _sdpa_ref(q, k, v, is_causal=True)
    _close(ours, ref, atol=2e-6)
    # The causal flag must matter (first query sees only key 0, so equals v[:, 0]).
    _close(ours[:, 0], v[:, 0], atol=1e-6)
    assert float(np.max(np.abs(_np(ours) - _sdpa_ref(q, k, v)))) > 1e-2


@pytest.mark.parametrize("block_q,heads", [(4, None), (7, 1), (7, 2), (64, None), (64, 1)])  # blocks with
def test_blocked_attention_matches_sdpa(block_q, heads):  # padding or one; heads per step: all 4 (default), 1, 2
    """The CPU blocked loop: plain, per-query / per-batch masks (a fully masked row averages the
    values as jax.nn does), key-padding masks, per-head bias, causal, and bf16 inputs."""
    from sam3_jax.layers.attention import blocked_attention

    rng = _rng(11)
    b, tq, tk, n, d = 2, 13, 9, 4, 8
    q, k, v = _randn(rng, b, tq, n, d), _randn(rng, b, tk, n, d), _randn(rng, b, tk, n, d)
    jq, jk, jv = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    blocked_attention = functools.partial(blocked_attention, heads_per_step=heads)
    run = functools.partial(blocked_attention, jq, jk, jv, block_q=block_q)
    _close(run(), _sdpa_ref(q, k, v), atol=2e-6)

    mask = rng.random((b, 1, tq, tk)) > 0.5
    mask[..., 0] = True
    _close(run(mask=jnp.asarray(mask)), _sdpa_ref(q, k, v, attn_mask=_t(mask)), atol=2e-6)
    key_pad = rng.random((b, 1, 1, tk)) > 0.3
    key_pad[..., 1] = True
    _close(run(mask=jnp.asarray(key_pad)), _sdpa_ref(q, k, v, attn_mask=_t(key_pad)), atol=2e-6)
    dead = mask.copy()
    dead[1, :, 5] = False  # batch 1, query 5 sees no key
    want = dot_product_attention(jq, jk, jv, mask=jnp.asarray(dead), implementation="xla")
    _close(run(mask=jnp.asarray(dead)), want, atol=2e-6)
    _close(run(mask=jnp.asarray(dead))[1, 5], v[1].mean(0), atol=2e-6)

    bias = _randn(rng, 1, n, tq, tk)
    _close(run(bias=jnp.asarray(bias)), _sdpa_ref(q, k, v, attn_mask=_t(bias)), atol=2e-6)
    both = dot_product_attention(jq, jk, jv, bias=jnp.asarray(bias), mask=jnp.asarray(mask), implementation="xla")
    _close(run(bias=jnp.asarray(bias), mask=jnp.asarray(mask)), both, atol=2e-6)

    qs = q[:, :tk]
    causal = blocked_attention(jnp.asarray(qs), jk, jv, is_causal=True, block_q=block_q)
    _close(causal, _sdpa_ref(qs, k, v, is_causal=True), atol=2e-6)

    half = run.func(*(x.astype(jnp.bfloat16) for x in (jq, jk, jv)), block_q=block_q)
    # For inference (stack.for_inference) the loop slices bf16 q / k / v as uint16 bits on the CPU
    # (no whole fp32 copy): the same results.
    fns = [jax.jit(f(lambda *a: run.func(*a, block_q=block_q))) for f in (lambda f: f, stack.for_inference)]
    args16 = [x.astype(jnp.bfloat16) for x in (jq, jk, jv)]
    plain, bits = (np.asarray(f(*args16), np.float32) for f in fns)
    np.testing.assert_array_equal(bits, plain)
    if jax.default_backend() == "cpu":
        assert "xui16>" in fns[1].lower(*args16).as_text() and "xui16>" not in fns[0].lower(*args16).as_text()
    if heads is None:
        with pytest.raises(ValueError, match="heads_per_step 3 does not divide the 4 heads"):
            run.func(jq, jk, jv, heads_per_step=3)
    assert half.dtype == jnp.bfloat16
    ref = dot_product_attention(*(x.astype(jnp.bfloat16) for x in (jq, jk, jv)), implementation="xla")
    _close(half.astype(jnp.float32), ref.astype(jnp.float32), atol=2e-2)


def test_blocked_attention_bf16_within_one_ulp_of_torch():
    """bf16 inputs: the blocked loop's outputs against torch's bf16 SDPA (which, like it, forms the
    logits and the softmax in fp32 and rounds the weights to bf16 for the value product): within
    one bf16 ulp at the outputs' scale, and most of them (86-91 %) bit-equal."""
    from sam3_jax.layers.attention import blocked_attention

    rng = _rng(5)
    for b, t, n, d in [(1, 600, 4, 32), (2, 300, 8, 64)]:
        q, k, v = _randn(rng, b, t, n, d, scale=2.0), _randn(rng, b, t, n, d), _randn(rng, b, t, n, d)
        ours = np.asarray(blocked_attention(*(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)), block_q=128)
                          .astype(jnp.float32))
        ref = _sdpa_ref(*(_np(_t(x).to(torch.bfloat16).float()) for x in (q, k, v)))  # bf16-valued inputs
        half = torch.nn.functional.scaled_dot_product_attention(
            *(_t(x.transpose(0, 2, 1, 3)).to(torch.bfloat16) for x in (q, k, v))).float().numpy().transpose(0, 2, 1, 3)
        # one ulp at the outputs' scale (values near 0 are sums that cancel: their error is the
        # terms' rounding, not their own ulp's)
        ulp = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(half), 1.0))) - 7)
        assert np.all(np.abs(ours - half) <= ulp), float(np.max(np.abs(ours - half) / ulp))
        assert np.mean(ours == half) > 0.8
        assert np.max(np.abs(ours - ref)) < 2e-2  # and near the fp32 attention of the same inputs


def test_blocked_attention_is_the_cpu_default_for_long_sequences():
    from sam3_jax.layers import attention

    assert attention.use_blocked((1, 5184, 8, 32), (1, 5184, 8, 32)) == (jax.default_backend() == "cpu")
    assert not attention.use_blocked((2, 256, 8, 32), (2, 256, 8, 32))
    with pytest.raises(ValueError, match="does not broadcast"):
        attention.blocked_attention(*(jnp.zeros((1, 4, 2, 8)),) * 3, mask=jnp.ones((3, 1, 4, 4), bool))


def test_automatic_attention_choice(monkeypatch):
    """implementation=None: blocked for long sequences on the CPU; cuDNN for bf16 / fp16 with a
    head dim it takes on an Ampere+ GPU (faked here: only the choice is tested); XLA otherwise."""
    from sam3_jax.layers import attention

    auto = attention.automatic_implementation
    long, short = (1, 5184, 8, 32), (2, 256, 8, 32)
    if jax.default_backend() == "cpu":
        assert auto(long, long, jnp.float32) == "blocked"
        assert auto(short, short, jnp.bfloat16) == "xla"

    class FakeGpu:
        compute_capability = "9.0"

    monkeypatch.setattr(attention.jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(attention.jax, "devices", lambda *a: [FakeGpu()])
    assert auto(long, long, jnp.bfloat16) == "cudnn"
    assert auto(short, short, jnp.float16) == "cudnn"
    assert auto(short, short, jnp.float32) == "xla"  # no fp32 cuDNN kernel
    assert auto((2, 256, 4, 256), (2, 256, 4, 256), jnp.bfloat16) == "xla"  # head dim above 128
    assert auto((2, 256, 4, 36), (2, 256, 4, 36), jnp.bfloat16) == "xla"  # not a multiple of 8
    # jax's cuDNN backward takes only even sequence lengths
    assert auto((2, 201, 4, 32), (2, 5184, 4, 32), jnp.bfloat16) == "xla"
    assert auto((2, 5, 4, 32), (2, 5, 4, 32), jnp.bfloat16) == "xla"
    assert auto((2, 200, 4, 32), (2, 38, 4, 32), jnp.bfloat16) == "cudnn"
    FakeGpu.compute_capability = "7.5"
    assert auto(short, short, jnp.bfloat16) == "xla"  # pre-Ampere


# ---------------------------------------------------------------------------------------------
# 9. MultiHeadAttention vs torch nn.MultiheadAttention (TORCH_MHA layout)
# ---------------------------------------------------------------------------------------------


def _torch_mha(d, h, rng):
    mha = torch.nn.MultiheadAttention(d, h, batch_first=True).eval()
    with torch.no_grad():
        for p in mha.parameters():
            p.copy_(_t(_randn(rng, *p.shape, scale=0.2)))
    return mha


def test_mha_self_attention_causal_matches_torch():
    rng = _rng(9)
    b, t, d, h = 2, 10, 32, 4
    tmha = _torch_mha(d, h, rng)
    x = _randn(rng, b, t, d)
    mod = MultiHeadAttention(h)
    params = _convert(layouts.TORCH_MHA, _state(tmha), _unboxed_shapes(mod, jnp.asarray(x)))

    with torch.no_grad():
        ref_full, _ = tmha(_t(x), _t(x), _t(x), need_weights=False)
        # torch's boolean attn_mask is True = NOT allowed.
        causal_block = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
        ref_causal, _ = tmha(_t(x), _t(x), _t(x), attn_mask=causal_block, need_weights=False)

    ours_full = mod.apply({"params": params}, jnp.asarray(x))
    _close(ours_full, ref_full, atol=1e-5)
    allow = jnp.tril(jnp.ones((t, t), bool))[None, None]
    ours_mask = mod.apply({"params": params}, jnp.asarray(x), mask=allow)
    ours_flag = mod.apply({"params": params}, jnp.asarray(x), is_causal=True)
    _close(ours_mask, ref_causal, atol=1e-5)
    _close(ours_flag, ref_causal, atol=1e-5)


def test_mha_cross_attention_matches_torch():
    rng = _rng(10)
    b, tq, tk, d, h = 2, 6, 13, 48, 6
    tmha = _torch_mha(d, h, rng)
    xq, xk, xv = _randn(rng, b, tq, d), _randn(rng, b, tk, d), _randn(rng, b, tk, d)
    mod = MultiHeadAttention(h)
    shapes = _unboxed_shapes(mod, jnp.asarray(xq), jnp.asarray(xk), jnp.asarray(xv))
    params = _convert(layouts.TORCH_MHA, _state(tmha), shapes)

    # Key padding: torch key_padding_mask True = ignore; ours mask True = attend.
    pad = np.zeros((b, tk), bool)
    pad[1, 9:] = True
    with torch.no_grad():
        ref, _ = tmha(_t(xq), _t(xk), _t(xv), need_weights=False)
        ref_pad, _ = tmha(_t(xq), _t(xk), _t(xv), key_padding_mask=_t(pad), need_weights=False)
    ours = mod.apply({"params": params}, jnp.asarray(xq), jnp.asarray(xk), jnp.asarray(xv))
    _close(ours, ref, atol=1e-5)
    ours_pad = mod.apply({"params": params}, jnp.asarray(xq), jnp.asarray(xk), jnp.asarray(xv),
                         mask=jnp.asarray(~pad)[:, None, None, :])
    _close(ours_pad, ref_pad, atol=1e-5)


def test_vit_attention_layout_matches_fused_qkv():
    """VIT_ATTENTION: fused qkv Linear (rows [q; k; v], head-major) and proj Linear, as the official
    ViT Attention uses them: qkv(x).reshape(B, T, 3, H, D)."""
    rng = _rng(11)
    b, t, d, h = 2, 7, 24, 3
    hd = d // h
    w_qkv, b_qkv = _randn(rng, 3 * d, d, scale=0.2), _randn(rng, 3 * d, scale=0.2)
    w_o, b_o = _randn(rng, d, d, scale=0.2), _randn(rng, d, scale=0.2)
    x = _randn(rng, b, t, d)

    qkv = torch.nn.functional.linear(_t(x), _t(w_qkv), _t(b_qkv)).reshape(b, t, 3, h, hd)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, T, D)
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    ref = torch.nn.functional.linear(o.transpose(1, 2).reshape(b, t, d), _t(w_o), _t(b_o))

    mod = MultiHeadAttention(h)
    src = {"qkv.weight": w_qkv, "qkv.bias": b_qkv, "proj.weight": w_o, "proj.bias": b_o,
           "freqs_cis": np.zeros((t, hd // 2), np.complex64)}
    params = _convert(layouts.VIT_ATTENTION, src, _unboxed_shapes(mod, jnp.asarray(x)))
    _close(mod.apply({"params": params}, jnp.asarray(x)), ref, atol=1e-5)


def test_dense_layout_matches_linear():
    rng = _rng(12)
    lin = torch.nn.Linear(20, 12)
    with torch.no_grad():
        for p in lin.parameters():
            p.copy_(_t(_randn(rng, *p.shape)))
    x = _randn(rng, 3, 5, 20)
    mod = core.Dense(12, ("embed", "mlp"))
    params = _convert(layouts.DENSE, _state(lin), _unboxed_shapes(mod, jnp.asarray(x)))
    _close(mod.apply({"params": params}, jnp.asarray(x)), lin(_t(x)), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# 10. Window partition
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hw,win", [((10, 10), 4), ((8, 12), 4), ((7, 5), 3), ((6, 6), 6)])
def test_window_partition_roundtrip_and_official(hw, win):
    vitdet = _vitdet()
    b, c = 2, 5
    x = _randn(_rng(13), b, *hw, c)
    windows, padded = window_partition(jnp.asarray(x), win)
    hp, wp = (-(-hw[0] // win) * win, -(-hw[1] // win) * win)
    assert padded == (hp, wp)
    assert windows.shape == (b * (hp // win) * (wp // win), win * win, c)
    back = window_unpartition(windows, win, padded, hw)
    _close(back, x, atol=0.0)

    ref_w, ref_pad = vitdet.window_partition(_t(x), win)
    assert tuple(ref_pad) == padded
    _close(windows, _np(ref_w).reshape(windows.shape), atol=0.0)
    # Unpartition of arbitrary window contents (padding region non-zero) matches the official too.
    y = _randn(_rng(14), *windows.shape)
    ref_back = vitdet.window_unpartition(_t(y.reshape(-1, win, win, c)), win, ref_pad, hw)
    _close(window_unpartition(jnp.asarray(y), win, padded, hw), ref_back, atol=0.0)


# ---------------------------------------------------------------------------------------------
# 11. Layout transforms: src_shapes consistent with forward
# ---------------------------------------------------------------------------------------------

_DST_SHAPES = {
    "Dense": {"kernel": (20, 12), "bias": (12,)},
    "Conv": {"kernel": (3, 5, 4, 8), "bias": (8,)},
    "ConvTranspose": {"kernel": (2, 2, 6, 3), "bias": (3,)},
    "ViTAttention": {"query/kernel": (24, 3, 8), "key/kernel": (24, 3, 8), "value/kernel": (24, 3, 8),
                     "query/bias": (3, 8), "key/bias": (3, 8), "value/bias": (3, 8),
                     "out/kernel": (3, 8, 24), "out/bias": (24,)},
}
_DST_SHAPES["MultiheadAttention"] = _DST_SHAPES["ViTAttention"]


@pytest.mark.parametrize(
    "layout", [layouts.DENSE, layouts.CONV, layouts.CONV_TRANSPOSE, layouts.VIT_ATTENTION, layouts.TORCH_MHA],
    ids=lambda l: l.name,
)
def test_layout_src_shapes_consistent_with_forward(layout):
    dst = _DST_SHAPES[layout.name]
    rng = _rng(15)
    covered = set()
    for leaf in layout.leaves:
        if leaf.recomputed:
            assert leaf.forward is None and leaf.dst == ()
            continue
        shapes = [dst[d] for d in leaf.dst]
        src_shapes = leaf.src_shapes(shapes)
        assert len(src_shapes) == len(leaf.src)
        srcs = [_randn(rng, *s) for s in src_shapes]
        outs = leaf.forward(srcs, shapes)
        assert [tuple(o.shape) for o in outs] == [tuple(s) for s in shapes], leaf
        # A pure rearrangement: every source value lands in the outputs exactly once.
        assert sum(math.prod(s) for s in src_shapes) == sum(math.prod(s) for s in shapes)
        np.testing.assert_array_equal(
            np.sort(np.concatenate([np.ravel(o) for o in outs])),
            np.sort(np.concatenate([np.ravel(s) for s in srcs])))
        covered.update(leaf.dst)
    assert covered == set(dst)


def test_vit_of_one_block_kind_equals_the_cond_path(monkeypatch):
    """All blocks global: the trunk skips the per-block cond; the result equals the cond path."""
    from sam3_jax.config import model_config
    from sam3_jax.model import vit as vit_mod

    cfg = model_config("tiny")
    cfg.image_size = 112
    cfg.vit.update(global_blocks=(0, 1, 2, 3), window_size=4)
    x = jnp.asarray(_randn(_rng(3), 1, 112, 112, 3))
    model = vit_mod.vit_from_config(cfg)
    params = model.init(jax.random.key(0), x)["params"]
    fast = model.apply({"params": params}, x)[0]
    has_cond = lambda m: " cond[" in str(jax.make_jaxpr(lambda p: m.apply({"params": p}, x)[0])(params))  # noqa: E731
    assert not has_cond(model)
    monkeypatch.setattr(vit_mod, "_block_kind", lambda depth, blocks: "mixed")
    mixed = vit_mod.vit_from_config(cfg)
    assert has_cond(mixed)
    _close(fast, mixed.apply({"params": params}, x)[0], atol=1e-5)


class _ScanBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=x.dtype, param_dtype=jnp.float32)
        return x + core.Mlp(48, **kw)(core.LayerNorm(**kw)(x)), None


class _ScanTop(nn.Module):
    @nn.compact
    def __call__(self, x):
        return stack.scanned(_ScanBlock, length=3, in_axes=())(name="layers")(x)[0]


def test_for_inference_slices_bf16_stacks_as_bits():
    """Inside `stack.for_inference`, a scanned stack of bf16 params is sliced as uint16 bits: the
    same param tree and the same outputs as the plain scan, and no fp32 copy of the whole stack in
    the compiled program (XLA:CPU's upcast of a sliced bf16 array); init and gradients elsewhere
    are untouched."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 16)), jnp.float32)
    plain = _ScanTop().init(jax.random.PRNGKey(0), x)
    wrapped = stack.for_inference(_ScanTop().init)(jax.random.PRNGKey(0), x)
    assert jax.tree_util.tree_structure(plain) == jax.tree_util.tree_structure(wrapped)
    for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(wrapped)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), nn.meta.unbox(plain))
    xb = x.astype(jnp.bfloat16)
    run = jax.jit(lambda p, v: _ScanTop().apply(p, v))
    run_bits = jax.jit(stack.for_inference(lambda p, v: _ScanTop().apply(p, v)))
    np.testing.assert_array_equal(np.asarray(run(params, xb), np.float32), np.asarray(run_bits(params, xb), np.float32))
    stacked = [f"f32[3,{a.shape[1]},{a.shape[2]}]" for a in jax.tree_util.tree_leaves(params) if a.ndim == 3]
    hlo, hlo_bits = (f.lower(params, xb).compile().as_text() for f in (run, run_bits))
    if jax.default_backend() == "cpu":
        assert any(s in hlo for s in stacked)  # the upcast this works around (if XLA drops it, so can we)
    assert not any(s in hlo_bits for s in stacked)
    grads = jax.grad(lambda p: _ScanTop().apply(p, x).sum())(nn.meta.unbox(plain))
    assert all(g.dtype == jnp.float32 and np.any(np.asarray(g) != 0) for g in jax.tree_util.tree_leaves(grads))
