"""Checks that need a GPU (skipped elsewhere): cuDNN's fused attention against XLA's reference.

On a GPU, bf16 attention runs through cuDNN by default (`automatic_implementation`). These tests
hold that kernel to XLA's math: one attention call with every option the model uses (key padding,
additive bias, causal), its gradients, and the whole detector at the tiny
config in bf16. Run them where a GPU is present: `pytest tests/test_gpu.py`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam3_jax.layers.attention import automatic_implementation, dot_product_attention

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")

BF16 = jnp.bfloat16


def _qkv(b=2, tq=96, tk=80, n=4, h=32, seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(ks[0], (b, tq, n, h)).astype(BF16),
            jax.random.normal(ks[1], (b, tk, n, h)).astype(BF16),
            jax.random.normal(ks[2], (b, tk, n, h)).astype(BF16))


def _err(a, b) -> float:
    return float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))


def test_cudnn_is_the_bf16_default():
    q, k, _ = _qkv()
    assert automatic_implementation(q.shape, k.shape, q.dtype) == "cudnn"
    assert automatic_implementation(q.shape, k.shape, jnp.float32) == "xla"


def test_train_step_with_automatic_attention():
    """Gradients of the tiny detector in bf16 compile with the automatic choice (jax's cuDNN
    backward rejects odd sequence lengths, e.g. 5 geometry tokens or 201 decoder queries, so those
    stay on XLA) and are finite. (Seen failing on an H200 with jax 0.11.2 before that rule.)"""
    import flax.linen as nn

    from sam3_jax.config import model_config
    from sam3_jax.model.sam3_image import Sam3Image

    cfg = model_config("tiny")
    cfg.dtype = "bfloat16"
    args = _detector_inputs(cfg)
    model = Sam3Image(cfg)
    params = nn.meta.unbox(model.init(jax.random.key(0), *args))["params"]

    def loss(p):
        o = model.apply({"params": p}, *args)
        return sum(jnp.mean(o[k].astype(jnp.float32) ** 2) for k in ("pred_logits", "pred_boxes", "pred_masks"))

    grads = jax.jit(jax.grad(loss))(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))


@pytest.mark.parametrize("case", ["plain", "key_padding", "bias", "causal", "bias_and_mask"])
def test_cudnn_attention_matches_xla(case):
    q, k, v = _qkv(tk=96 if case == "causal" else 80)
    b, tq, n, _ = q.shape
    tk = k.shape[1]
    kw = {}
    if case in ("key_padding", "bias_and_mask"):
        keep = jnp.arange(tk)[None, :] < jnp.array([[tk], [tk - 17]])  # (B, Tk): second row padded
        kw["mask"] = keep[:, None, None, :]
    if case in ("bias", "bias_and_mask"):
        kw["bias"] = (0.5 * jax.random.normal(jax.random.key(5), (b, n, tq, tk))).astype(BF16)
    if case == "causal":
        kw["is_causal"] = True

    def f(impl, q, k, v):
        return dot_product_attention(q, k, v, implementation=impl, **kw)

    want, got = f("xla", q, k, v), f("cudnn", q, k, v)
    assert _err(got, want) < 2e-2
    # gradients through the fused backward kernel
    g = jax.random.normal(jax.random.key(7), want.shape).astype(BF16)
    grads = {impl: jax.grad(lambda q, k, v: jnp.sum((f(impl, q, k, v) * g).astype(jnp.float32)),
                            argnums=(0, 1, 2))(q, k, v) for impl in ("xla", "cudnn")}
    for gx, gc in zip(grads["xla"], grads["cudnn"]):
        scale = float(jnp.max(jnp.abs(gx.astype(jnp.float32))))
        assert _err(gc, gx) < 3e-2 * scale


def _detector_inputs(cfg):
    """One random image, one short text prompt and one exemplar box (5 geometry tokens: odd)."""
    s, t = cfg.image_size, cfg.text.context_length
    img = jax.random.uniform(jax.random.key(1), (1, s, s, 3), minval=-1, maxval=1)
    tokens = jnp.zeros((1, t), jnp.int32).at[0, :4].set(jnp.array([49406, 320, 1929, 49407]))
    box = jnp.array([[[0.5, 0.5, 0.3, 0.4]]])
    return img, tokens, box, jnp.ones((1, 1), jnp.int32), jnp.zeros((1, 1), bool)


def test_detector_bf16_cudnn_matches_xla():
    """The tiny detector in bf16 with cuDNN attention everywhere it applies vs XLA's attention."""
    import flax.linen as nn

    from sam3_jax.config import model_config
    from sam3_jax.model.sam3_image import Sam3Image

    out = {}
    for impl in ("xla", None):  # None: the automatic choice = cuDNN for the bf16 attentions
        cfg = model_config("tiny")
        cfg.dtype, cfg.attention_impl = "bfloat16", impl
        args = _detector_inputs(cfg)
        model = Sam3Image(cfg)
        params = nn.meta.unbox(model.init(jax.random.key(0), *args))["params"]
        o = jax.jit(model.apply)({"params": params}, *args)
        out[impl or "auto"] = {k: np.asarray(o[k], np.float32) for k in ("pred_logits", "pred_boxes", "pred_masks")}
    for k in out["xla"]:
        err = np.max(np.abs(out["auto"][k] - out["xla"][k]))
        scale = max(1.0, float(np.max(np.abs(out["xla"][k]))))
        assert err < 0.05 * scale, (k, err, scale)
