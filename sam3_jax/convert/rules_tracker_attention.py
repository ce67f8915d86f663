"""Conversion rules of the tracker's memory attention (official `tracker.transformer.encoder.*`,
106 tensors at the released sizes: 4 layers x 26 + the final norm's 2).

Official module prefix (under `src`)                   -> Flax path (under `dst`), layer i stacked
  layers.{i}.self_attn.{q,k,v,out}_proj (Linear)        -> layers/self_attn/{query,key,value,out}
  layers.{i}.cross_attn_image.{q,k,v,out}_proj          -> layers/cross_attn_image/{query,key,value,out}
      (k / v read the 64-d memory: weights (C, mem_dim); `SAM_ATTENTION` takes the in-width from the target)
  layers.{i}.linear1, linear2                           -> layers/linear1, layers/linear2
  layers.{i}.norm1, norm2, norm3                        -> layers/norm1, norm2, norm3
  norm                                                  -> norm

The RoPE tables of the two attentions are plain attributes of the official modules, not buffers:
the checkpoint holds none, so there is nothing to recompute or check here.
"""

from __future__ import annotations

from sam3_jax.convert.layouts import DENSE, LAYERNORM, SAM_ATTENTION
from sam3_jax.convert.rule import Rule


def memory_attention_rules(
    cfg=None, src: str = "tracker.transformer.encoder", dst: str = "tracker/transformer/encoder"
) -> list[Rule]:
    """Rules for the official `TransformerEncoderCrossAttention` at `src` -> `MemoryAttention` params
    at `dst` (the number of layers comes from the stacked target params)."""
    del cfg  # the key set per layer does not depend on the sizes
    s, d = f"{src}.layers.{{i}}", f"{dst}/layers"
    return [
        Rule(f"{s}.self_attn", f"{d}/self_attn", SAM_ATTENTION),
        Rule(f"{s}.cross_attn_image", f"{d}/cross_attn_image", SAM_ATTENTION),
        Rule(f"{s}.linear1", f"{d}/linear1", DENSE),
        Rule(f"{s}.linear2", f"{d}/linear2", DENSE),
        Rule(f"{s}.norm1", f"{d}/norm1", LAYERNORM),
        Rule(f"{s}.norm2", f"{d}/norm2", LAYERNORM),
        Rule(f"{s}.norm3", f"{d}/norm3", LAYERNORM),
        Rule(f"{src}.norm", f"{dst}/norm", LAYERNORM),
    ]
