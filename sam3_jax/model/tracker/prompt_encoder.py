"""SAM prompt encoder of the SAM 3 tracker (official: sam3/sam/prompt_encoder.py, `PromptEncoder` and
`PositionEmbeddingRandom`, as `Sam3TrackerBase._build_sam_heads` builds it: embed_dim = tracker
width, image embedding g x g with g = image_size // patch_size, input image image_size x image_size,
16 mask channels, GELU).

Prompts become two kinds of embeddings:

* sparse (B, N, C), one token per point / box corner. A point (x, y) in input-image pixels is moved
  to its pixel centre (+0.5), divided by the image (W, H) and coded with random Fourier features:
  u = 2 * xy01 - 1, a = 2pi * (u @ G), code = [sin(a), cos(a)] with G the (2, C/2) Gaussian matrix
  `pe_layer.positional_encoding_gaussian_matrix`. G is a fixed random draw made at training time: it
  is taken from the checkpoint, never recomputed, and gets no gradient. Then, by label:
    -1 (not a point / padding): the code is *replaced* by `not_a_point_embed`;
     0 / 1 (negative / positive point): `point_embeddings_0` / `point_embeddings_1` is added;
     2 / 3 (box top-left / bottom-right corner): `point_embeddings_2` / `point_embeddings_3` is added.
  A box (x1, y1, x2, y2) becomes its two corners, labelled 2 and 3. When points come without boxes,
  one padding point (label -1) is appended, so N = num_points + 1 (the tracker always passes
  points and never boxes). Tokens are ordered [points (+ padding), box corners].
* dense (B, g, g, C): a mask prompt of (B, 4g, 4g, 1) logits through `mask_downscaling`
  (Conv 2x2 s2 -> LayerNorm2d -> GELU -> Conv 2x2 s2 -> LayerNorm2d -> GELU -> Conv 1x1), or, with
  no mask, `no_mask_embed` broadcast over the grid.

`get_dense_pe()` is the Fourier code of the g x g grid of cell centres ((i + 0.5) / g), (1, g, g, C):
the image positional encoding of the mask decoder.

LayerNorm2d (channels of an NHWC map) uses eps 1e-6 (official `LayerNorm2d`), GELU is the exact
erf form. Layouts are batch-first / NHWC. Labels are checked (ValueError naming `labels`) whenever
they are concrete, i.e. outside `jax.jit`; under tracing an unknown label is, as in the official
code, a point with no label embedding.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sam3_jax.layers import partitioning as P
from sam3_jax.layers.core import Conv, LayerNorm2d, gelu
from sam3_jax.model.tracker.common import token_table

Dtype = Any

# Point labels of the official prompt encoder: -1 not a point, 0 negative, 1 positive, 2 / 3 box corners.
POINT_LABELS = (-1, 0, 1, 2, 3)
NUM_POINT_EMBEDDINGS = 4


def check_point_labels(labels: Any, argname: str = "labels") -> None:
    """Raises ValueError if concrete `labels` hold a value the prompt encoder does not know."""
    if isinstance(labels, jax.core.Tracer):
        return
    v = np.asarray(labels)
    if v.dtype == bool or not (np.issubdtype(v.dtype, np.integer) or np.issubdtype(v.dtype, np.floating)):
        raise ValueError(f"{argname} must be an integer array of point labels, got dtype {v.dtype}")
    bad = ~np.isin(v, POINT_LABELS)
    if bad.any():
        found = sorted({float(x) if not float(x).is_integer() else int(x) for x in v[bad].ravel()})
        raise ValueError(
            f"{argname} must hold -1 (not a point), 0 (negative), 1 (positive), 2 (box top-left) or "
            f"3 (box bottom-right); got {found}"
        )


class RandomFourierPositions(nn.Module):
    """Official `PositionEmbeddingRandom`: coordinates in [0, 1] -> [sin, cos] of random frequencies.

    `positional_encoding_gaussian_matrix` (2, num_pos_feats) is drawn N(0, 1) at init like the
    official buffer (scale 1) and otherwise comes from the checkpoint; the forward stops its gradient.
    """

    num_pos_feats: int = 128
    param_dtype: Dtype = jnp.float32

    def setup(self):
        self.positional_encoding_gaussian_matrix = self.param(
            "positional_encoding_gaussian_matrix", P.with_axes(nn.initializers.normal(1.0), (None, None)),
            (2, self.num_pos_feats), self.param_dtype,
        )

    def encode(self, coords: jax.Array) -> jax.Array:
        """coords (..., 2) as (x, y) in [0, 1] -> (..., 2 * num_pos_feats), fp32."""
        g = jax.lax.stop_gradient(self.positional_encoding_gaussian_matrix).astype(jnp.float32)
        u = 2.0 * coords.astype(jnp.float32) - 1.0
        # Always a full-fp32 product: the angles reach tens of radians, where bf16 passes would be far off.
        a = jnp.einsum("...i,if->...f", u, g, precision=jax.lax.Precision.HIGHEST)
        a = jnp.float32(2 * math.pi) * a
        return jnp.concatenate([jnp.sin(a), jnp.cos(a)], axis=-1)

    def encode_pixels(self, coords: jax.Array, image_size: Sequence[int]) -> jax.Array:
        """coords (..., 2) as (x, y) in pixels of an image of size (H, W) -> Fourier codes."""
        h, w = image_size
        # A true division like torch's (XLA may fold a constant divisor into a rounded reciprocal).
        size = jax.lax.optimization_barrier(jnp.asarray([w, h], jnp.float32))
        return self.encode(coords.astype(jnp.float32) / size)

    def grid(self, size: Sequence[int]) -> jax.Array:
        """Codes of the cell centres of an (H, W) grid: (H, W, 2 * num_pos_feats)."""
        h, w = int(size[0]), int(size[1])
        # Cell centres exactly as torch computes them in fp32: (cumsum of ones - 0.5) / size.
        y = (np.arange(1, h + 1, dtype=np.float32) - np.float32(0.5)) / np.float32(h)
        x = (np.arange(1, w + 1, dtype=np.float32) - np.float32(0.5)) / np.float32(w)
        xy = np.stack(np.broadcast_arrays(x[None, :], y[:, None]), axis=-1)
        return self.encode(jnp.asarray(xy))


class _MaskDownscaling(nn.Module):
    """Official `mask_downscaling` Sequential; children keep its indices (0, 1, 3, 4, 6)."""

    mask_in_chans: int
    embed_dim: int
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, masks: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = Conv(self.mask_in_chans // 4, 2, stride=2, name="0", **kw)(masks)
        x = gelu(LayerNorm2d(name="1", **kw)(x))
        x = Conv(self.mask_in_chans, 2, stride=2, name="3", **kw)(x)
        x = gelu(LayerNorm2d(name="4", **kw)(x))
        return Conv(self.embed_dim, 1, name="6", **kw)(x)


class PromptEncoder(nn.Module):
    """Official SAM `PromptEncoder`, batch-first / NHWC."""

    embed_dim: int = 256
    image_embedding_size: tuple[int, int] = (72, 72)  # (H, W) of the image embedding
    input_image_size: tuple[int, int] = (1008, 1008)  # (H, W) of the input image, point coordinates' frame
    mask_in_chans: int = 16
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def setup(self):
        if self.embed_dim % 2:
            raise ValueError(f"embed_dim {self.embed_dim} must be even (sin and cos halves)")
        self.pe_layer = RandomFourierPositions(self.embed_dim // 2, param_dtype=self.param_dtype)
        self.point_embeddings = [
            token_table(1, self.embed_dim, self.param_dtype) for _ in range(NUM_POINT_EMBEDDINGS)
        ]
        self.not_a_point_embed = token_table(1, self.embed_dim, self.param_dtype)
        self.mask_downscaling = _MaskDownscaling(
            self.mask_in_chans, self.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype
        )
        self.no_mask_embed = token_table(1, self.embed_dim, self.param_dtype)

    @property
    def mask_input_size(self) -> tuple[int, int]:
        return 4 * self.image_embedding_size[0], 4 * self.image_embedding_size[1]

    def _out(self, x: jax.Array) -> jax.Array:
        return x.astype(self.dtype) if self.dtype is not None else x

    def get_dense_pe(self) -> jax.Array:
        """Positional encoding of the image embedding grid, (1, H, W, C)."""
        return self._out(self.pe_layer.grid(self.image_embedding_size)[None])

    def _embed_points(self, points: jax.Array, labels: jax.Array, pad: bool) -> jax.Array:
        table = jnp.concatenate([e.embedding for e in self.point_embeddings], axis=0)  # (4, C)
        not_a_point = self.not_a_point_embed.embedding[0]
        points = points.astype(jnp.float32) + 0.5  # pixel centres
        if pad:
            b = points.shape[0]
            points = jnp.concatenate([points, jnp.zeros((b, 1, 2), points.dtype)], axis=1)
            labels = jnp.concatenate([labels, jnp.full((b, 1), -1, labels.dtype)], axis=1)
        codes = self.pe_layer.encode_pixels(points, self.input_image_size)
        lab = labels[..., None]
        codes = jnp.where(lab == -1, jnp.broadcast_to(not_a_point.astype(codes.dtype), codes.shape), codes)
        for k in range(NUM_POINT_EMBEDDINGS):
            codes = jnp.where(lab == k, codes + table[k].astype(codes.dtype), codes)
        return codes

    def _embed_boxes(self, boxes: jax.Array) -> jax.Array:
        corners = boxes.astype(jnp.float32).reshape(-1, 2, 2) + 0.5  # pixel centres
        codes = self.pe_layer.encode_pixels(corners, self.input_image_size)
        top_left = self.point_embeddings[2].embedding.astype(codes.dtype)
        bottom_right = self.point_embeddings[3].embedding.astype(codes.dtype)
        return codes + jnp.concatenate([top_left, bottom_right], axis=0)[None]

    def __call__(
        self,
        points: Optional[jax.Array] = None,
        labels: Optional[jax.Array] = None,
        boxes: Optional[jax.Array] = None,
        masks: Optional[jax.Array] = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Embeds prompts.

        points (B, N, 2) (x, y) in input-image pixels with labels (B, N) int (see the module
        docstring); boxes (B, 4) or (B, 1, 4) (x1, y1, x2, y2) in pixels; masks (B, 4g, 4g, 1) mask
        logits at `mask_input_size`. Any of them may be None. The batch is that of points, else
        boxes, else masks, else 1.

        Returns sparse (B, N', C) with N' = N + 1 (padding point) when there are points but no boxes,
        N + 2 with both, 2 with a box only, 0 with neither; and dense (B, g, g, C).
        """
        c = self.embed_dim
        gh, gw = self.image_embedding_size
        if (points is None) != (labels is None):
            raise ValueError("points and labels must be given together")
        if points is not None:
            if points.ndim != 3 or points.shape[-1] != 2:
                raise ValueError(f"points must have shape (B, N, 2), got {tuple(points.shape)}")
            if tuple(labels.shape) != tuple(points.shape[:2]):
                raise ValueError(f"labels {tuple(labels.shape)} must have shape (B, N) = {tuple(points.shape[:2])}")
            check_point_labels(labels, "labels")
        if boxes is not None:
            nb = boxes.shape[0] if boxes.ndim else 0
            if tuple(boxes.shape) not in ((nb, 4), (nb, 1, 4)):
                raise ValueError(f"boxes must have shape (B, 4) or (B, 1, 4), got {tuple(boxes.shape)}")
            if points is not None and nb != points.shape[0]:
                raise ValueError(f"boxes hold {nb} rows, points {points.shape[0]}: one box per batch row")
        if masks is not None:
            mh, mw = self.mask_input_size
            if masks.ndim != 4 or tuple(masks.shape[1:]) != (mh, mw, 1):
                raise ValueError(f"masks must have shape (B, {mh}, {mw}, 1), got {tuple(masks.shape)}")
        if points is not None:
            bs = points.shape[0]
        elif boxes is not None:
            bs = boxes.shape[0]
        elif masks is not None:
            bs = masks.shape[0]
        else:
            bs = 1
        if masks is not None and masks.shape[0] != bs:
            raise ValueError(f"masks hold {masks.shape[0]} rows for a batch of {bs} prompts")

        sparse = [jnp.zeros((bs, 0, c), jnp.float32)]
        if points is not None:
            sparse.append(self._embed_points(points, labels, pad=boxes is None))
        if boxes is not None:
            sparse.append(self._embed_boxes(boxes))
        if self.is_initializing():  # create every param, whatever the prompt
            _ = [e.embedding for e in self.point_embeddings], self.not_a_point_embed.embedding
            _ = self.pe_layer.positional_encoding_gaussian_matrix
        sparse_embeddings = jnp.concatenate(sparse, axis=1)

        if masks is not None:
            dense = self.mask_downscaling(masks.astype(self.dtype or jnp.float32))
        else:
            if self.is_initializing():
                self.mask_downscaling(jnp.zeros((1, 4, 4, 1), self.dtype or jnp.float32))
            dense = jnp.broadcast_to(self.no_mask_embed.embedding.reshape(1, 1, 1, c), (bs, gh, gw, c))
        return self._out(sparse_embeddings), self._out(dense)


def prompt_encoder_from_config(cfg) -> PromptEncoder:
    """The tracker's prompt encoder at the sizes of a model config."""
    g = cfg.image_size // cfg.vit.patch_size
    return PromptEncoder(
        embed_dim=cfg.tracker.d_model,
        image_embedding_size=(g, g),
        input_image_size=(cfg.image_size, cfg.image_size),
        mask_in_chans=cfg.tracker.sam.mask_in_chans,
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
    )
