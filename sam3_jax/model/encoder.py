"""Fusion encoder of SAM 3 (official: sam3/model/encoder.py, `TransformerEncoderFusion` built by
`model_builder._create_transformer_encoder`).

The image tokens of the single feature level (B, H*W, C), row-major, attend to themselves and then
to the prompt sequence (text + geometry tokens). Each of the `num_layers` identical layers is
pre-norm:

    y = norm1(x);  x = x + self_attn(q = k = y + pos, v = y)
    y = norm2(x);  x = x + cross_attn_image(q = y, k = v = prompt)    (prompt padding masked)
    y = norm3(x);  x = x + linear2(relu(linear1(y)))

There is no final norm, no level embedding (one level) and no pooled-text addition (the released
config disables `add_pooled_text_to_img_feat`, so `text_pooling_proj` does not exist). The prompt is
not updated. Everything is batch-first; the official returns the same tensor sequence-first.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam3_jax.layers import partitioning as P
from sam3_jax.layers.attention import MultiHeadAttention
from sam3_jax.layers.core import Dense, LayerNorm
from sam3_jax.layers.stack import from_bits, scanned

Dtype = Any


def key_padding_to_mask(pad: jax.Array) -> jax.Array:
    """(B, T) bool, True = padding -> attention mask (B, 1, 1, T), True = attend.

    A row whose keys are all padding gives NaN in torch; here it averages over the padded keys.
    """
    return ~pad[:, None, None, :]


class TransformerEncoderLayer(nn.Module):
    """Official `TransformerEncoderLayer` with `pre_norm=True` (ReLU FFN), used by the fusion encoder
    and the geometry encoder, which differ only in where the positional encoding enters:

        x += SA(q = k = norm1 x [+ x_pos], v = norm1 x)            key padding: self_pad
        x += CA(q = norm2 x, k = memory [+ memory_pos], v = memory) key padding: memory_pad
        x += linear2(relu(linear1(norm3 x)))

    `pos_at_self_attn` / `pos_at_cross_keys` are the official `pos_enc_at_attn` /
    `pos_enc_at_cross_attn_keys`; queries of the cross-attention never get a position.
    Scanned call: (x, x_pos, self_pad, memory, memory_pos, memory_pad); unused ones may be None.
    `part` runs a piece of the layer on the same params: "self" only the self-attention residual
    (memory args unused), "rest" all but it (x has had it already); "all" is the layer.
    """

    num_heads: int
    dim_feedforward: int
    pos_at_self_attn: bool
    pos_at_cross_keys: bool
    cross_attn_name: str = "cross_attn_image"
    attention_impl: Optional[str] = None
    part: str = "all"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, x_pos, self_pad, memory, memory_pos, memory_pad):
        if self.part not in ("all", "self", "rest"):
            raise ValueError(f"part must be 'all', 'self' or 'rest', got {self.part!r}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        mha = dict(attention_impl=self.attention_impl, **kw)
        d = x.shape[-1]
        x = P.constrain(x, (P.BATCH, P.LENGTH, P.ACT_EMBED))

        if self.part != "rest":
            y = LayerNorm(name="norm1", **kw)(x)
            qk = y + x_pos.astype(y.dtype) if self.pos_at_self_attn else y
            x = x + MultiHeadAttention(self.num_heads, name="self_attn", **mha)(
                qk, qk, y, mask=None if self_pad is None else key_padding_to_mask(self_pad)
            )
            if self.part == "self":
                return x, None

        y = LayerNorm(name="norm2", **kw)(x)
        keys = memory + memory_pos.astype(memory.dtype) if self.pos_at_cross_keys else memory
        x = x + MultiHeadAttention(self.num_heads, name=self.cross_attn_name, **mha)(
            y, keys, memory, mask=None if memory_pad is None else key_padding_to_mask(memory_pad)
        )

        y = LayerNorm(name="norm3", **kw)(x)
        y = Dense(self.dim_feedforward, (P.EMBED, P.MLP), name="linear1", **kw)(y)
        y = Dense(d, (P.MLP, P.EMBED), name="linear2", **kw)(jax.nn.relu(y))
        return x + y, None


class FusionEncoder(nn.Module):
    """Official `transformer.encoder`: scanned pre-norm layers under `layers`.

    The first layer's self-attention sees only the image (the prompt enters at its
    cross-attention), so a predictor that runs many prompts on one image computes it once with
    `self_attend` and passes the result as `self_attended`; the outputs are those of the full
    call (the same operations on the same inputs).
    """

    num_layers: int
    num_heads: int
    dim_feedforward: int
    attention_impl: Optional[str] = None
    remat: str = "none"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def _layer_kwargs(self) -> dict[str, Any]:
        return dict(num_heads=self.num_heads, dim_feedforward=self.dim_feedforward, pos_at_self_attn=True,
                    pos_at_cross_keys=False, attention_impl=self.attention_impl, dtype=self.dtype,
                    param_dtype=self.param_dtype)

    def _layers(self, length: int, **kw) -> nn.Module:
        return scanned(TransformerEncoderLayer, length=length, in_axes=(nn.broadcast,) * 5, remat=self.remat)(
            **self._layer_kwargs(), **kw)

    def _stacked_params(self) -> Any:
        """The stacked layer params as stored (bf16 stacks may be uint16 bits, layers/stack.py)."""
        if "params" not in self.variables or "layers" not in self.variables["params"]:
            raise ValueError("FusionEncoder.self_attend / self_attended need initialised params (apply, not init)")
        return self.variables["params"]["layers"]

    def _first_layer_params(self) -> Any:
        return from_bits(jax.tree.map(lambda a: a[0], self._stacked_params()))

    @staticmethod
    def _check_image(img: jax.Array, img_pos: jax.Array) -> None:
        if img.ndim != 3 or img_pos.shape != img.shape:
            raise ValueError(
                f"img and img_pos must both be (B, HW, C), got {tuple(img.shape)} and {tuple(img_pos.shape)}"
            )

    def self_attend(self, img: jax.Array, img_pos: jax.Array) -> jax.Array:
        """The first layer's self-attention residual (B, HW, C): prompt-independent, once per image."""
        self._check_image(img, img_pos)
        dtype = self.dtype or img.dtype
        layer = TransformerEncoderLayer(**self._layer_kwargs(), part="self", parent=None)
        x, _ = layer.apply({"params": self._first_layer_params()}, img.astype(dtype), img_pos.astype(dtype),
                           None, None, None, None)
        return x

    @nn.compact
    def __call__(self, img: jax.Array, img_pos: jax.Array, prompt: jax.Array, prompt_mask: jax.Array,
                 self_attended: Optional[jax.Array] = None) -> jax.Array:
        """img, img_pos (B, HW, C); prompt (B, P, C); prompt_mask (B, P) bool, True = padding;
        self_attended: `self_attend(img, img_pos)` computed earlier (B, HW, C), or None.

        Returns the encoded image tokens `memory` (B, HW, C).
        """
        self._check_image(img, img_pos)
        if prompt.ndim != 3 or prompt.shape[0] != img.shape[0] or prompt.shape[-1] != img.shape[-1]:
            raise ValueError(f"prompt must be (B, P, C) matching img {tuple(img.shape)}, got {tuple(prompt.shape)}")
        if prompt_mask.shape != prompt.shape[:2] or prompt_mask.dtype != jnp.bool_:
            raise ValueError(
                f"prompt_mask must be a bool (B, P) array (True = padding), got {prompt_mask.dtype} "
                f"{tuple(prompt_mask.shape)}"
            )
        dtype = self.dtype or img.dtype
        img_pos, prompt = img_pos.astype(dtype), prompt.astype(dtype)
        if self_attended is None:
            x, _ = self._layers(self.num_layers, name="layers")(img.astype(dtype), img_pos, None, prompt, None,
                                                                prompt_mask)
            return x
        if self_attended.shape != img.shape:
            raise ValueError(
                f"self_attended must have img's shape {tuple(img.shape)}, got {tuple(self_attended.shape)}")
        x, _ = TransformerEncoderLayer(**self._layer_kwargs(), part="rest", parent=None).apply(
            {"params": self._first_layer_params()}, self_attended.astype(dtype), img_pos, None, prompt, None,
            prompt_mask)
        if self.num_layers > 1:  # the later layers' slice stays as stored; the scan bitcasts per layer
            rest = jax.tree.map(lambda a: a[1:], self._stacked_params())
            x, _ = self._layers(self.num_layers - 1, parent=None).apply(
                {"params": rest}, x, img_pos, None, prompt, None, prompt_mask)
        return x


def fusion_encoder_from_config(cfg) -> FusionEncoder:
    return FusionEncoder(
        num_layers=cfg.encoder_layers,
        num_heads=cfg.num_heads,
        dim_feedforward=cfg.dim_feedforward,
        attention_impl=cfg.attention_impl,
        remat=cfg.remat,
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
    )
