"""Causal text encoder of SAM 3 (official: sam3/model/text_encoder_ve.py, `VETextEncoder`).

token + learned positional embedding -> `layers` pre-norm causal blocks (x += MHA(ln_1 x) with a
causal mask; x += MLP(ln_2 x)) -> ln_final -> resizer Linear(width -> d_model). All context tokens
(SOT, EOT and padding included) are kept; the padding mask (True = padding, token id 0) is only used
downstream. `text_projection` (width x 512) is carried for checkpoint round trips but, as in the
official model, its output is discarded, so it is never applied here.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam3_jax.layers import partitioning as P
from sam3_jax.layers.attention import MultiHeadAttention
from sam3_jax.layers.core import Dense, LayerNorm, Mlp
from sam3_jax.layers.stack import scanned

Dtype = Any


class ResidualAttentionBlock(nn.Module):
    num_heads: int
    mlp_hidden: int
    attention_impl: Optional[str] = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, _: Any = None):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = P.constrain(x, (P.BATCH, P.LENGTH, P.ACT_EMBED))
        y = LayerNorm(name="ln_1", **kw)(x)
        x = x + MultiHeadAttention(self.num_heads, attention_impl=self.attention_impl, name="attn", **kw)(
            y, is_causal=True
        )
        y = LayerNorm(name="ln_2", **kw)(x)
        x = x + Mlp(self.mlp_hidden, fc1_name="c_fc", fc2_name="c_proj", name="mlp", **kw)(y)
        return x, None


class TextTransformer(nn.Module):
    """The CLIP-style causal transformer (official `TextTransformer`, pool_type 'none')."""

    width: int
    heads: int
    layers: int
    context_length: int = 32
    vocab_size: int = 49408
    mlp_ratio: float = 4.0
    proj_dim: int = 512
    attention_impl: Optional[str] = None
    remat: str = "none"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """tokens (B, T<=context) int -> (token embeddings (B, T, W), final states (B, T, W))."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        embed = nn.Embed(
            self.vocab_size,
            self.width,
            embedding_init=P.with_axes(nn.initializers.normal(0.02), (P.VOCAB, P.EMBED)),
            param_dtype=self.param_dtype,
            name="token_embedding",
        )
        pos = self.param(
            "positional_embedding",
            P.with_axes(nn.initializers.normal(0.01), (P.POSITIONS, P.EMBED)),
            (self.context_length, self.width),
            self.param_dtype,
        )
        # Kept for round trips; the official encoder computes pooled @ text_projection and throws
        # the result away, so nothing here depends on it.
        self.param(
            "text_projection",
            P.with_axes(nn.initializers.normal(self.width**-0.5), (P.EMBED, None)),
            (self.width, self.proj_dim),
            self.param_dtype,
        )
        t = tokens.shape[1]
        embeds = embed(tokens)
        if self.dtype is not None:
            embeds = embeds.astype(self.dtype)
        x = embeds + pos[:t].astype(embeds.dtype)
        Blocks = scanned(ResidualAttentionBlock, length=self.layers, in_axes=(nn.broadcast,), remat=self.remat)
        x, _ = Blocks(
            self.heads, int(self.width * self.mlp_ratio), self.attention_impl, name="transformer", **kw
        )(x, None)
        x = LayerNorm(name="ln_final", **kw)(x)
        return embeds, x


class TextEncoder(nn.Module):
    """`VETextEncoder`: TextTransformer + resizer. Outputs are batch-first (the official is seq-first)."""

    d_model: int
    width: int
    heads: int
    layers: int
    context_length: int = 32
    vocab_size: int = 49408
    mlp_ratio: float = 4.0
    proj_dim: int = 512
    attention_impl: Optional[str] = None
    remat: str = "none"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array) -> dict[str, jax.Array]:
        """tokens: (B, context_length) int32 CLIP BPE ids, 0 = padding.

        Returns features (B, T, d_model), mask (B, T) bool with True = padding, and the raw token
        embeddings `embeds` (B, T, width) (the official `language_embeds`).
        """
        if tokens.ndim != 2 or tokens.shape[1] > self.context_length:
            raise ValueError(
                f"text tokens must have shape (B, <= {self.context_length}), got {tuple(tokens.shape)}"
            )
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise TypeError(f"text tokens must be integer ids, got dtype {tokens.dtype}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        embeds, states = TextTransformer(
            self.width,
            self.heads,
            self.layers,
            self.context_length,
            self.vocab_size,
            self.mlp_ratio,
            self.proj_dim,
            self.attention_impl,
            self.remat,
            name="encoder",
            **kw,
        )(tokens)
        feats = Dense(self.d_model, (P.EMBED, None), name="resizer", **kw)(states)
        return {"features": feats, "mask": tokens == 0, "embeds": embeds}


def text_encoder_from_config(cfg) -> TextEncoder:
    t = cfg.text
    return TextEncoder(
        d_model=cfg.d_model,
        width=t.width,
        heads=t.heads,
        layers=t.layers,
        context_length=t.context_length,
        vocab_size=t.vocab_size,
        mlp_ratio=t.mlp_ratio,
        proj_dim=t.proj_dim,
        attention_impl=cfg.attention_impl,
        remat=cfg.remat,
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
    )
