"""Logical axis names for parameters and activations.

Modules only name logical axes; the mapping from logical names to mesh axes comes from the config
(`logical_axis_rules`) and is applied by `sam3_jax.parallel` (or `flax.linen.logical_axis_rules`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax

# Parameter axes.
EMBED = "embed"  # model width of a transformer stream
MLP = "mlp"  # hidden width of an MLP
HEADS = "heads"  # attention heads
KV = "kv"  # per-head feature dim
VOCAB = "vocab"  # token vocabulary
LAYERS = "layers"  # stacked (scanned) layers
CONV_IN = "conv_in"  # conv input channels
CONV_OUT = "conv_out"  # conv output channels
POSITIONS = "positions"  # rows of a learned position table

# Activation axes.
BATCH = "batch"
LENGTH = "length"
HEIGHT = "height"
WIDTH = "width"
ACT_EMBED = "act_embed"
ACT_HEADS = "act_heads"

Initializer = Callable[..., jax.Array]


def with_axes(init: Initializer, axes: Sequence[str | None]) -> Initializer:
    """Wraps an initializer so the created parameter carries logical axis names."""
    return nn.with_logical_partitioning(init, tuple(axes))


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Pins an activation's logical sharding; a no-op outside a mesh / rules context."""
    return nn.with_logical_constraint(x, tuple(axes))
