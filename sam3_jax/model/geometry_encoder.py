"""Geometry / exemplar prompt encoder of SAM 3 (official: `SequenceGeometryEncoder` in
sam3/model/geometry_encoders.py, as configured by `_create_geometry_encoder` in model_builder.py).

Released configuration: boxes are not turned into points; points and boxes are each embedded three
ways and the three embeddings summed, then a label embedding is added:

* boxes (normalized cxcywh):
    - `boxes_direct_project`: Linear(4 -> d) on the raw cxcywh;
    - RoI pooling: the image level is LayerNormed (`img_pre_norm`), boxes are turned into xyxy and
      scaled by (W, H, W, H) of that level, `roi_align(7x7, spatial_scale 1, adaptive sampling,
      aligned=False)`, then `boxes_pool_project`, a 7x7 Conv (valid) that maps 7x7 to 1x1;
    - `boxes_pos_enc_project`: Linear(d + 2 -> d) on [sine(cy), sine(cx), h, w]
      (y before x, h before w);
* points (normalized xy):
    - `points_direct_project`: Linear(2 -> d);
    - bilinear `grid_sample` (align_corners=False, zero padding) of the LayerNormed level at the
      point, then `points_pool_project` Linear(d -> d);
    - `points_pos_enc_project`: Linear(d -> d) on [sine(x), sine(y)] (x before y here);
* label embedding `label_embed` (2 rows: 0 = negative, 1 = positive).

The tokens are packed as [valid points, valid boxes, CLS, padding] (right-padded, the official
`concat_padded_sequences`, which also decides what padded slots hold; reproduced exactly), then
`final_proj` + `norm`, then `num_layers` pre-norm layers (self-attention with key padding mask and
no positions; cross-attention from the tokens to the *un-normalized* image level, keys = features
+ sine positions, values = features; ReLU FFN), then `encode_norm`.

Everything is batch-first here (the official module is sequence-first). No dropout (inference).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam3_jax.layers import partitioning as P
from sam3_jax.layers.core import Conv, Dense, LayerNorm
from sam3_jax.layers.roi_align import grid_sample, roi_align
from sam3_jax.layers.stack import scanned
from sam3_jax.model.encoder import TransformerEncoderLayer

Dtype = Any


def sine_encode_coords(v: jax.Array, num_feats: int, temperature: float = 10000.0) -> jax.Array:
    """Sine code of normalized coordinates (official `PositionEmbeddingSine._encode_xy`, one axis).

    v (...,) in [0, 1] -> (..., num_feats): interleaved sin / cos of v * 2pi / dim_t, with
    dim_t[k] = temperature ** (2 * floor(k / 2) / num_feats); no +1 shift, no normalization.
    """
    k = jnp.arange(num_feats, dtype=jnp.float32)
    dim_t = jnp.float32(temperature) ** (2 * jnp.floor(k / 2) / num_feats)
    # Keep a true division like torch (XLA would fold a constant divisor into a rounded reciprocal).
    dim_t = jax.lax.optimization_barrier(dim_t)
    a = (v.astype(jnp.float32) * jnp.float32(2 * math.pi))[..., None] / dim_t
    out = jnp.stack([jnp.sin(a[..., 0::2]), jnp.cos(a[..., 1::2])], axis=-1)
    return out.reshape(*v.shape, num_feats)


def concat_padded(
    seq1: jax.Array, mask1: jax.Array, seq2: jax.Array, mask2: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Batch-first `concat_padded_sequences`: the valid tokens of seq2 follow those of seq1.

    seq (B, L, C), mask (B, L) True = padding, both right-padded. Output length L1 + L2. Like the
    official op, slot t holds seq2[t - n1] for n1 <= t < n1 + L2 (padded tokens of seq2 included),
    otherwise seq1[t] for t < L1, otherwise zeros; the mask is t >= n1 + n2.
    """
    b, l1, c = seq1.shape
    l2 = seq2.shape[1]
    n1 = jnp.sum(~mask1, axis=-1).astype(jnp.int32)
    n2 = jnp.sum(~mask2, axis=-1).astype(jnp.int32)
    t = jnp.arange(l1 + l2, dtype=jnp.int32)
    out = jnp.concatenate([seq1, jnp.zeros((b, l2, c), seq1.dtype)], axis=1)
    if l2:
        idx = t[None, :] - n1[:, None]  # (B, L1 + L2)
        from2 = (idx >= 0) & (idx < l2)
        picked = jnp.take_along_axis(seq2, jnp.clip(idx, 0, l2 - 1)[..., None], axis=1)
        out = jnp.where(from2[..., None], picked.astype(out.dtype), out)
    mask = t[None, :] >= (n1 + n2)[:, None]
    return out, mask


class GeometryEncoder(nn.Module):
    """SAM 3 `SequenceGeometryEncoder` (released configuration), batch-first / NHWC."""

    d_model: int = 256
    num_heads: int = 8
    dim_feedforward: int = 2048
    num_layers: int = 3
    roi_size: int = 7
    num_labels: int = 2
    temperature: float = 10000.0
    attention_impl: Optional[str] = None
    remat: str = "none"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        *,
        boxes: jax.Array,
        box_labels: jax.Array,
        box_mask: jax.Array,
        img_feats: jax.Array,
        img_pos: jax.Array,
        points: Optional[jax.Array] = None,
        point_labels: Optional[jax.Array] = None,
        point_mask: Optional[jax.Array] = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Encodes box (and point) prompts into tokens.

        boxes (B, Nb, 4) normalized cxcywh; box_labels (B, Nb) int (1 = positive, 0 = negative);
        box_mask (B, Nb) bool, True = padding (right-padded); img_feats (B, H, W, C) the last kept
        detector level (`vision_features`, un-normalized); img_pos (B, H, W, C) its sine positions;
        points (B, Np, 2) normalized xy with labels / mask like the boxes (None = no points).
        Returns tokens (B, Np + Nb + 1, C) and mask (B, Np + Nb + 1) bool, True = padding.
        """
        d = self.d_model
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, h, w, c = img_feats.shape
        if c != d:
            raise ValueError(f"img_feats has {c} channels, expected d_model={d}")
        if img_pos.shape != img_feats.shape:
            raise ValueError(f"img_pos shape {img_pos.shape} != img_feats shape {img_feats.shape}")
        if boxes.ndim != 3 or boxes.shape[0] != b or boxes.shape[-1] != 4:
            raise ValueError(f"boxes must have shape (B={b}, Nb, 4), got {boxes.shape}")
        nb = boxes.shape[1]
        if box_labels.shape != (b, nb) or box_mask.shape != (b, nb):
            raise ValueError(
                f"box_labels {box_labels.shape} / box_mask {box_mask.shape} must be (B, Nb) = {(b, nb)}"
            )
        if points is None:
            points = jnp.zeros((b, 0, 2), jnp.float32)
            point_labels = jnp.zeros((b, 0), jnp.int32)
            point_mask = jnp.zeros((b, 0), bool)
        np_ = points.shape[1]
        if points.shape != (b, np_, 2):
            raise ValueError(f"points must have shape (B={b}, Np, 2), got {points.shape}")
        if point_labels is None:
            point_labels = jnp.ones((b, np_), jnp.int32)
        if point_mask is None:
            point_mask = jnp.zeros((b, np_), bool)
        if point_labels.shape != (b, np_) or point_mask.shape != (b, np_):
            raise ValueError(
                f"point_labels {point_labels.shape} / point_mask {point_mask.shape} must be (B, Np) = {(b, np_)}"
            )

        act = self.dtype or img_feats.dtype
        label_embed = nn.Embed(
            self.num_labels, d, embedding_init=P.with_axes(nn.initializers.normal(1.0), (None, P.EMBED)),
            param_dtype=self.param_dtype, name="label_embed",
        )
        cls_embed = nn.Embed(
            1, d, embedding_init=P.with_axes(nn.initializers.normal(1.0), (None, P.EMBED)),
            param_dtype=self.param_dtype, name="cls_embed",
        )
        normed = LayerNorm(name="img_pre_norm", **kw)(img_feats)
        half = d // 2

        # Points: direct + pooled + sine-coded position, then the label.
        points = points.astype(jnp.float32)
        pts = Dense(d, (None, P.EMBED), name="points_direct_project", **kw)(points)
        sampled = grid_sample(normed, points * 2.0 - 1.0)  # (B, Np, C)
        pts = pts + Dense(d, (P.EMBED, None), name="points_pool_project", **kw)(sampled)
        enc = jnp.concatenate(
            [sine_encode_coords(points[..., 0], half, self.temperature),
             sine_encode_coords(points[..., 1], half, self.temperature)], axis=-1,
        )
        pts = pts + Dense(d, (None, P.EMBED), name="points_pos_enc_project", **kw)(enc.astype(act))
        pts = label_embed(point_labels.astype(jnp.int32)).astype(act) + pts

        # Boxes: direct + RoI-pooled + sine-coded center and raw size, then the label.
        boxes = boxes.astype(jnp.float32)
        bxs = Dense(d, (None, P.EMBED), name="boxes_direct_project", **kw)(boxes)
        cx, cy, bw, bh = (boxes[..., k] for k in range(4))
        xyxy = jnp.stack([cx - 0.5 * bw, cy - 0.5 * bh, cx + 0.5 * bw, cy + 0.5 * bh], axis=-1)
        xyxy = xyxy * jnp.array([w, h, w, h], jnp.float32)
        pooled = roi_align(normed, xyxy, self.roi_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False)
        r = self.roi_size
        pooled = Conv(d, r, name="boxes_pool_project", **kw)(pooled.reshape(b * nb, r, r, c))
        bxs = bxs + pooled.reshape(b, nb, d)
        enc = jnp.concatenate(
            [sine_encode_coords(cy, half, self.temperature), sine_encode_coords(cx, half, self.temperature),
             bh[..., None], bw[..., None]], axis=-1,
        )
        bxs = bxs + Dense(d, (None, P.EMBED), name="boxes_pos_enc_project", **kw)(enc.astype(act))
        bxs = label_embed(box_labels.astype(jnp.int32)).astype(act) + bxs

        tokens, mask = concat_padded(pts.astype(act), point_mask.astype(bool), bxs.astype(act), box_mask.astype(bool))
        cls = cls_embed(jnp.zeros((b, 1), jnp.int32)).astype(act)
        tokens, mask = concat_padded(tokens, mask, cls, jnp.zeros((b, 1), bool))
        tokens = Dense(d, (P.EMBED, None), name="final_proj", **kw)(tokens)
        tokens = LayerNorm(name="norm", **kw)(tokens)

        memory = img_feats.reshape(b, h * w, c).astype(act)
        memory_pos = img_pos.reshape(b, h * w, c).astype(act)
        if self.num_layers > 0:
            Layers = scanned(TransformerEncoderLayer, length=self.num_layers, in_axes=(nn.broadcast,) * 5,
                             remat=self.remat)
            # Self-attention without positions (over the padded prompt tokens); cross-attention
            # keys = image features + their sine positions.
            tokens, _ = Layers(
                self.num_heads, self.dim_feedforward, pos_at_self_attn=False, pos_at_cross_keys=True,
                attention_impl=self.attention_impl, name="encode", **kw
            )(tokens, None, mask, memory, memory_pos, None)
            tokens = LayerNorm(name="encode_norm", **kw)(tokens)
        return tokens, mask


def geometry_encoder_from_config(cfg) -> GeometryEncoder:
    return GeometryEncoder(
        d_model=cfg.d_model,
        num_heads=cfg.num_heads,
        dim_feedforward=cfg.dim_feedforward,
        num_layers=cfg.geometry_layers,
        attention_impl=cfg.attention_impl,
        remat=cfg.remat,
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
    )
