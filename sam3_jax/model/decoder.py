"""DETR-like decoder of SAM 3 with a presence token and box relative position bias (official:
sam3/model/decoder.py, `TransformerDecoder` + `TransformerDecoderLayer`, built by
`model_builder._create_transformer_decoder`; the per-layer heads as `Sam3Image._run_decoder` /
`_update_scores_and_boxes` apply them at eval time).

Queries: `query_embed` (Q, C) content, initial boxes sigmoid(`reference_points`) (Q, 4) cxcywh. A
learned `presence_token` is put in front of the queries inside every layer, with a zero query
position and a zero bias row in the image cross-attention. For each of the L layers, with the
reference boxes r that enter it:

    query_pos = ref_point_head(sine(r))                       (sine order [y, x, w, h], 512 dims)
    bias      = boxRPB_log(r)                                  (B, heads, Q, H*W)
    x = [presence; queries]
    x = norm2(x + self_attn(q = k = x + pos, v = x))
    x = catext_norm(x + ca_text(q = x + pos, k = v = prompt, prompt padding masked))
    x = norm1(x + cross_attn(q = x + pos, k = memory + memory_pos, v = memory, + bias))
    x = norm3(x + linear2(relu(linear1(x))))                   (computed in float32)
    hs = norm(queries);  box = sigmoid(inverse_sigmoid(r) + bbox_embed(hs))
    presence_logit = presence_token_head(presence_token_out_norm(presence))

The un-normed queries go to the next layer together with box (gradient-stopped) as its reference.
The layer norms are named as in the official code, not by execution order. The presence logits are
not clamped: the official clamp's result is discarded, so it has no effect (kept that way).

DAC (`dac=True`, the official training path; off at eval): the Q queries and their reference boxes
are repeated, [o2o; o2m] (2Q); self-attention runs over [presence; o2o] only, the o2m queries skip it
and `norm2` then normalises all of them; every other sub-layer and head sees all 2Q. The outputs
hold 2Q queries, the o2o ones first (Sam3Image splits them into the `_o2m` outputs).

boxRPB ('log'): grid coordinates are top-left, arange(n)/n; for each box (xyxy) the two edge
offsets per axis, d -> sign(8d) * log2(|8d| + 1) / 3, are mapped to per-head values by
boxRPB_embed_x / _y (MLP 2 -> C -> heads); bias[b, h, q, i*W + j] = By[b, q, i, h] + Bx[b, q, j, h].

The heads shared by all layers (norm, bbox_embed, ref_point_head, boxRPB MLPs, presence head) are
parameters of the decoder itself; the layer scan receives their parameters as a broadcast input and
applies them functionally, so only the per-layer weights carry the stacked 'layers' axis.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam3_jax.layers import partitioning as P
from sam3_jax.layers.attention import MultiHeadAttention
from sam3_jax.layers.core import TORCH_LN_EPS, Dense, LayerNorm
from sam3_jax.layers.stack import scanned
from sam3_jax.model.encoder import key_padding_to_mask
from sam3_jax.model.mlp import MLP

Dtype = Any

INVERSE_SIGMOID_EPS = 1e-3


def inverse_sigmoid(x: jax.Array, eps: float = INVERSE_SIGMOID_EPS) -> jax.Array:
    """log(x / (1 - x)) after clamping x to [0, 1] and both x and 1 - x to at least eps."""
    x = jnp.clip(x, 0.0, 1.0)
    num = jnp.maximum(x, eps)
    den = jnp.maximum(1.0 - x, eps)
    return jnp.log(num / den)


def box_cxcywh_to_xyxy(b: jax.Array) -> jax.Array:
    cx, cy, w, h = jnp.moveaxis(b, -1, 0)
    return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def box_sine_embed(boxes: jax.Array, num_feats: int = 256, temperature: float = 10000.0) -> jax.Array:
    """Sine embedding of (..., 4) cxcywh boxes in [0, 1] -> (..., 2 * num_feats), ordered [y, x, w, h].

    Each coordinate v gets F = num_feats / 2 features: with t = v * 2pi and
    dim_t[k] = T^(2 floor(k/2) / F), [sin(t/dim_t[0]), cos(t/dim_t[1]), sin(t/dim_t[2]), ...].
    (official `gen_sineembed_for_position`).
    """
    if num_feats % 2:
        raise ValueError(f"num_feats must be even, got {num_feats}")
    f = num_feats // 2
    k = jnp.arange(f, dtype=jnp.float32)
    dim_t = jnp.float32(temperature) ** (2 * jnp.floor(k / 2) / f)
    scale = jnp.float32(2 * math.pi)

    def embed(v: jax.Array) -> jax.Array:
        p = (v * scale)[..., None] / dim_t
        return jnp.stack([jnp.sin(p[..., 0::2]), jnp.cos(p[..., 1::2])], axis=-1).reshape(*v.shape, f)

    cx, cy, w, h = jnp.moveaxis(boxes.astype(jnp.float32), -1, 0)
    return jnp.concatenate([embed(cy), embed(cx), embed(w), embed(h)], axis=-1)


def _log_offsets(d: jax.Array) -> jax.Array:
    d = d * 8.0
    return jnp.sign(d) * jnp.log2(jnp.abs(d) + 1.0) / jnp.float32(math.log2(8))


def box_rpb_offsets(boxes: jax.Array, spatial_shape: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    """Log-scaled edge offsets of the grid rows / columns to each box.

    boxes (B, Q, 4) cxcywh -> dy (B, Q, H, 2) = f(row_i/H - [y0, y1]), dx (B, Q, W, 2) = f(col_j/W - [x0, x1]).
    """
    h, w = spatial_shape
    xyxy = box_cxcywh_to_xyxy(boxes)
    rows = jnp.arange(h, dtype=jnp.float32) / h
    cols = jnp.arange(w, dtype=jnp.float32) / w
    dy = rows[None, None, :, None] - xyxy[:, :, None, 1::2]
    dx = cols[None, None, :, None] - xyxy[:, :, None, 0::2]
    return _log_offsets(dy), _log_offsets(dx)


# ----------------------------------------------------------------------------------------------
# Heads shared by all layers.


def _shared_heads(d: int, num_heads: int, kw: dict, bound: bool) -> dict[str, nn.Module]:
    """The shared heads: bound to the calling module under their official names (bound=True, for
    parameter creation), or unbound definitions to `.apply` on given parameters (bound=False)."""

    def norm(name: str) -> nn.Module:
        if bound:
            return LayerNorm(name=name, **kw)
        # Same numerics as the `LayerNorm` factory; constructed unbound (the factory takes no parent).
        return nn.LayerNorm(epsilon=TORCH_LN_EPS, use_fast_variance=False, parent=None, **kw)

    def mlp(name: str, *dims: int, **extra) -> nn.Module:
        where = {"name": name} if bound else {"parent": None}
        return MLP(*dims, **extra, **kw, **where)

    return {
        "norm": norm("norm"),
        "bbox_embed": mlp("bbox_embed", d, d, 4, 3),
        "ref_point_head": mlp("ref_point_head", 2 * d, d, d, 2, out_axis=P.EMBED),
        "boxRPB_embed_x": mlp("boxRPB_embed_x", 2, d, num_heads, 2, in_axis=None),
        "boxRPB_embed_y": mlp("boxRPB_embed_y", 2, d, num_heads, 2, in_axis=None),
        "presence_token_head": mlp("presence_token_head", d, d, 1, 3),
        "presence_token_out_norm": norm("presence_token_out_norm"),
    }


class DecoderLayer(nn.Module):
    """One scanned step: the official `TransformerDecoderLayer` (params) plus the between-layer
    head work (functional, on the broadcast shared-head params).

    carry = (queries (B, Q, C), presence (B, 1, C), reference boxes used by this layer (gradient
    stopped after the first layer), reference boxes as reported (B, Q, 4) float32).
    """

    num_heads: int
    dim_feedforward: int
    spatial_shape: tuple[int, int]
    attention_impl: Optional[str] = None
    num_o2o: Optional[int] = None  # DAC: only the presence token and the first num_o2o queries self-attend
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def _layer(self, x, query_pos, rpb_bias, memory, memory_pos, prompt, prompt_mask):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        mha = dict(attention_impl=self.attention_impl, **kw)
        d = x.shape[-1]
        pos = jnp.concatenate([jnp.zeros_like(query_pos[:, :1]), query_pos], axis=1).astype(x.dtype)

        n_sa = x.shape[1] if self.num_o2o is None else 1 + self.num_o2o
        sa_in = x[:, :n_sa]
        qk = sa_in + pos[:, :n_sa]
        sa_out = sa_in + MultiHeadAttention(self.num_heads, name="self_attn", **mha)(qk, qk, sa_in)
        x = jnp.concatenate([sa_out, x[:, n_sa:]], axis=1) if n_sa < x.shape[1] else sa_out
        x = LayerNorm(name="norm2", **kw)(x)

        x = x + MultiHeadAttention(self.num_heads, name="ca_text", **mha)(
            x + pos, prompt, prompt, mask=key_padding_to_mask(prompt_mask)
        )
        x = LayerNorm(name="catext_norm", **kw)(x)

        bias = jnp.concatenate([jnp.zeros_like(rpb_bias[:, :, :1]), rpb_bias], axis=2)
        x = x + MultiHeadAttention(self.num_heads, name="cross_attn", **mha)(
            x + pos, memory + memory_pos, memory, bias=bias.astype(x.dtype)
        )
        x = LayerNorm(name="norm1", **kw)(x)

        # The official FFN runs with autocast disabled: float32 whatever the compute dtype.
        f32 = dict(dtype=jnp.float32, param_dtype=self.param_dtype)
        y = Dense(self.dim_feedforward, (P.EMBED, P.MLP), name="linear1", **f32)(x.astype(jnp.float32))
        y = Dense(d, (P.MLP, P.EMBED), name="linear2", **f32)(jax.nn.relu(y))
        x = LayerNorm(name="norm3", **kw)(x.astype(jnp.float32) + y)
        return x

    @nn.compact
    def __call__(self, carry, heads, memory, memory_pos, prompt, prompt_mask):
        tgt, presence, ref, ref_reported = carry
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        d = tgt.shape[-1]
        defs = _shared_heads(d, self.num_heads, kw, bound=False)

        def head(name: str, x: jax.Array) -> jax.Array:
            return defs[name].apply({"params": heads[name]}, x)

        query_pos = head("ref_point_head", box_sine_embed(ref, d).astype(tgt.dtype))
        dy, dx = box_rpb_offsets(ref, self.spatial_shape)
        by = head("boxRPB_embed_y", dy.astype(tgt.dtype))  # (B, Q, H, heads)
        bx = head("boxRPB_embed_x", dx.astype(tgt.dtype))  # (B, Q, W, heads)
        b, q = ref.shape[:2]
        h, w = self.spatial_shape
        rpb = (by[:, :, :, None, :] + bx[:, :, None, :, :]).reshape(b, q, h * w, self.num_heads)
        rpb = jnp.transpose(rpb, (0, 3, 1, 2))  # (B, heads, Q, HW)

        x = jnp.concatenate([presence, tgt], axis=1)
        x = self._layer(x, query_pos, rpb, memory, memory_pos, prompt, prompt_mask).astype(tgt.dtype)
        x = P.constrain(x, (P.BATCH, P.LENGTH, P.ACT_EMBED))
        presence, tgt = x[:, :1], x[:, 1:]

        hs = head("norm", tgt)
        delta = head("bbox_embed", hs).astype(jnp.float32)
        new_ref = jax.nn.sigmoid(inverse_sigmoid(ref) + delta)
        pred_boxes = jax.nn.sigmoid(inverse_sigmoid(ref_reported) + delta)
        presence_logit = head("presence_token_head", head("presence_token_out_norm", presence))[..., 0]

        out = {
            "hs": hs,
            "reference_boxes": ref_reported,
            "pred_boxes": pred_boxes,
            "presence_logits": presence_logit.astype(jnp.float32),  # (B, 1)
            "presence_feats": presence[:, 0],
        }
        return (tgt, presence, jax.lax.stop_gradient(new_ref), new_ref), out


class Decoder(nn.Module):
    """Official `transformer.decoder` (DAC on request: the training path)."""

    num_layers: int
    num_heads: int
    dim_feedforward: int
    num_queries: int
    attention_impl: Optional[str] = None
    remat: str = "none"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        memory: jax.Array,
        memory_pos: jax.Array,
        spatial_shape: tuple[int, int],
        prompt: jax.Array,
        prompt_mask: jax.Array,
        dac: bool = False,
    ) -> dict[str, jax.Array]:
        """memory, memory_pos (B, H*W, C) row-major; spatial_shape (H, W); prompt (B, P, C) with
        prompt_mask (B, P) bool, True = padding. dac: duplicate the queries (o2o then o2m, 2Q in the
        outputs below) as the official decoder does in training.

        Returns (batch-first, L = num_layers): hs (L, B, Q, C) after `norm`; reference_boxes
        (L, B, Q, 4), the cxcywh boxes entering each layer; pred_boxes (L, B, Q, 4) cxcywh and
        pred_boxes_xyxy; presence_logits (L, B, 1) (unclamped); presence_feats (B, C), the last
        layer's presence token before `presence_token_out_norm`.
        """
        h, w = (int(s) for s in spatial_shape)
        if memory.ndim != 3 or memory.shape[1] != h * w or memory_pos.shape != memory.shape:
            raise ValueError(
                f"memory and memory_pos must be (B, {h}*{w}, C) for spatial_shape {(h, w)}, got "
                f"{tuple(memory.shape)} and {tuple(memory_pos.shape)}"
            )
        if prompt.ndim != 3 or prompt.shape[0] != memory.shape[0] or prompt.shape[-1] != memory.shape[-1]:
            raise ValueError(
                f"prompt must be (B, P, C) matching memory {tuple(memory.shape)}, got {tuple(prompt.shape)}"
            )
        if prompt_mask.shape != prompt.shape[:2] or prompt_mask.dtype != jnp.bool_:
            raise ValueError(
                f"prompt_mask must be a bool (B, P) array (True = padding), got {prompt_mask.dtype} "
                f"{tuple(prompt_mask.shape)}"
            )
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        dtype = self.dtype or memory.dtype
        b, _, d = memory.shape
        q = self.num_queries

        def table(name: str, rows: int, cols: int, axes, init) -> jax.Array:
            return nn.Embed(
                rows, cols, embedding_init=P.with_axes(init, axes), param_dtype=self.param_dtype, name=name
            )(jnp.arange(rows))

        query_embed = table("query_embed", q, d, (None, P.EMBED), nn.initializers.normal(1.0))
        reference_points = table("reference_points", q, 4, (None, None), nn.initializers.normal(1.0))
        presence_token = table("presence_token", 1, d, (None, P.EMBED), nn.initializers.normal(1.0))

        heads = _shared_heads(d, self.num_heads, kw, bound=True)
        if self.is_initializing():
            # Create the shared heads' params here (the layer scan only reads them).
            heads["norm"](jnp.zeros((1, d), dtype))
            heads["bbox_embed"](jnp.zeros((1, d), dtype))
            heads["ref_point_head"](jnp.zeros((1, 2 * d), dtype))
            heads["boxRPB_embed_x"](jnp.zeros((1, 2), dtype))
            heads["boxRPB_embed_y"](jnp.zeros((1, 2), dtype))
            heads["presence_token_head"](jnp.zeros((1, d), dtype))
            heads["presence_token_out_norm"](jnp.zeros((1, d), dtype))
        head_params = nn.meta.unbox({k: self.variables["params"][k] for k in heads})

        reps = 2 if dac else 1
        tgt = jnp.broadcast_to(jnp.tile(query_embed.astype(dtype), (reps, 1))[None], (b, reps * q, d))
        presence = jnp.broadcast_to(presence_token.astype(dtype)[None], (b, 1, d))
        ref0 = jnp.tile(jax.nn.sigmoid(reference_points.astype(jnp.float32)), (reps, 1))
        ref = jnp.broadcast_to(ref0[None], (b, reps * q, 4))

        Layers = scanned(
            DecoderLayer,
            length=self.num_layers,
            in_axes=(nn.broadcast,) * 5,
            remat=self.remat,
        )
        _, out = Layers(
            self.num_heads,
            self.dim_feedforward,
            (h, w),
            self.attention_impl,
            q if dac else None,
            name="layers",
            **kw,
        )(
            (tgt, presence, ref, ref),
            head_params,
            memory.astype(dtype),
            memory_pos.astype(dtype),
            prompt.astype(dtype),
            prompt_mask,
        )
        out["pred_boxes_xyxy"] = box_cxcywh_to_xyxy(out["pred_boxes"])
        out["presence_feats"] = out["presence_feats"][-1]
        return out


def decoder_from_config(cfg) -> Decoder:
    return Decoder(
        num_layers=cfg.decoder_layers,
        num_heads=cfg.num_heads,
        dim_feedforward=cfg.dim_feedforward,
        num_queries=cfg.num_queries,
        attention_impl=cfg.attention_impl,
        remat=cfg.remat,
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
    )
