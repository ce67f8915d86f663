"""Memory attention of the SAM 3 tracker: the current frame's features attend to the memory bank
(official: `TransformerEncoderCrossAttention` and `TransformerDecoderLayerv2` in
sam3/model/decoder.py, `RoPEAttention` in sam3/sam/transformer.py, `compute_axial_cis` /
`apply_rotary_enc` in sam3/sam/rope.py; assembled by `model_builder._create_tracker_transformer`).

Inputs (batch-first; the official is sequence-first), C = tracker width, g = image_size // patch:
  curr, curr_pos          (B, g*g, C)  the current frame's 1x feature map (row-major) and its sine PE
  memory, memory_pos      (B, M, mem_dim) with the slot layout
                              [ F frames x g*g spatial memory tokens ; num_obj_ptr_tokens pointers ]
  memory_mask (optional)  (B, M) bool, True = a valid key

Data flow:
  x = curr + 0.1 * curr_pos                                  (official `pos_enc_at_input`)
  num_layers x (pre-norm, scanned under `layers`):
    y = norm1(x);  x = x + self_attn(q = k = v = y)             RoPE on q and k, no additive PE
    y = norm2(x);  x = x + cross_attn_image(q = y, k = memory + memory_pos, v = memory)
                   RoPE on q and on the spatial memory keys (the q table repeated once per memory
                   frame, `rope_k_repeat`); the trailing pointer tokens get no RoPE
                   (`num_k_exclude_rope`)
    y = norm3(x);  x = x + linear2(relu(linear1(y)))
  out = norm(x)                                              (B, g*g, C)

RoPE is the ViT's 2D axial form with interleaved pairs (`sam3_jax.layers.rope`): head dim
D = C // num_heads, D/4 frequencies theta^(-4j/D) per axis, token t of the g x g grid at
(x, y) = (t mod g, t div g), no position scaling. The table is computed from the config (the
official recomputes it too; it is not in the checkpoint). Cross-attention keys and values come from
`mem_dim` features (official `kv_in_dim`); every projection is a biased Linear, 1 head at the
released config, dropout only in training (none here: the port is inference-exact).

Extension (not in the official code): `memory_mask`. The JAX tracker keeps a fixed-capacity memory
bank with empty slots; masked keys are removed from the softmax exactly (their weight is 0, so they
contribute nothing whatever their content), so a padded bank gives the official result on the
unpadded one. Empty spatial slots are whole g*g frames anywhere among the spatial slots (each frame
gets the same RoPE table, so frame order does not matter), empty pointer slots anywhere among the
trailing `num_obj_ptr_tokens`. A batch row whose keys are all masked (no official counterpart)
averages the values of all its slots.

Params (under the tracker's `transformer/encoder`): `layers/{self_attn, cross_attn_image}/{query,
key, value, out}` (head-split kernels, the official q_proj / k_proj / v_proj / out_proj),
`layers/{norm1, norm2, norm3, linear1, linear2}` with a leading `layers` axis, and `norm`.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sam3_jax.layers import partitioning as P
from sam3_jax.layers.attention import MultiHeadAttention
from sam3_jax.layers.core import Dense, LayerNorm
from sam3_jax.layers.rope import apply_rope, axial_rope_angles, rope_cos_sin
from sam3_jax.layers.stack import scanned

Dtype = Any

# The official encoder adds the current frame's PE to its input scaled by this constant.
INPUT_POS_SCALE = 0.1
# RoPE base of both attentions (official `rope_theta`).
ROPE_THETA = 10000.0


def tracker_rope_tables(head_dim: int, grid: int, theta: float = ROPE_THETA) -> tuple[jax.Array, jax.Array]:
    """cos, sin (grid*grid, head_dim // 2) of the memory attention's 2D axial RoPE."""
    return rope_cos_sin(axial_rope_angles(head_dim, grid, grid, theta=theta, scale=1.0))


def _rope_fn(cos: jax.Array, sin: jax.Array, *, num_k_exclude_rope: int, rope_k_repeat: bool):
    """(q, k) -> (q, k) with RoPE on all queries and on the leading keys (all but the last
    `num_k_exclude_rope`). The table covers the g*g query grid; with `rope_k_repeat` the rotated keys
    may span several grids, each rotated with the same table."""
    n = cos.shape[0]

    def rope(q: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
        if q.shape[1] != n:
            raise ValueError(f"RoPE table covers {n} positions but there are {q.shape[1]} queries")
        q = apply_rope(q, cos, sin)
        n_rope = k.shape[1] - num_k_exclude_rope
        if n_rope < 0:
            raise ValueError(f"num_k_exclude_rope {num_k_exclude_rope} exceeds the {k.shape[1]} keys")
        if n_rope == 0:
            return q, k
        if rope_k_repeat:
            if n_rope % n:
                raise ValueError(f"{n_rope} keys to rotate are not a whole number of {n}-token grids")
            reps = n_rope // n
            kcos, ksin = jnp.tile(cos, (reps, 1)), jnp.tile(sin, (reps, 1))
        else:
            if n_rope != n:
                raise ValueError(f"{n_rope} keys to rotate but the RoPE table covers {n} positions "
                                 "(keys spanning several grids need rope_k_repeat)")
            kcos, ksin = cos, sin
        rotated = apply_rope(k[:, :n_rope], kcos, ksin)
        if num_k_exclude_rope == 0:
            return q, rotated
        return q, jnp.concatenate([rotated, k[:, n_rope:]], axis=1)

    return rope


class RoPEAttention(MultiHeadAttention):
    """Official `RoPEAttention`: SAM attention (q/k/v Linear to the internal width, heads split
    head-major, scaled dot product, `out` back to the query width) with 2D axial RoPE applied to the
    projected queries and to all keys but the last `num_k_exclude_rope`.

    Set `qkv_features` = width // downsample_rate (the official internal dim) and `out_features` =
    the query width. `rope_k_repeat`: keys may cover several g*g grids (memory frames), each rotated
    with the query table (the official repeats the table along the key axis). `cos` / `sin` are the
    (g*g, head_dim/2) tables of `tracker_rope_tables`. `mask` (broadcastable to (B, heads, Tq, Tk),
    True = attend) is an extension: the official attends to every key.
    """

    rope_k_repeat: bool = False

    def __call__(  # type: ignore[override]
        self,
        x_q: jax.Array,
        x_k: jax.Array,
        x_v: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        *,
        num_k_exclude_rope: int = 0,
        mask: Optional[jax.Array] = None,
    ) -> jax.Array:
        rope = _rope_fn(cos, sin, num_k_exclude_rope=num_k_exclude_rope, rope_k_repeat=self.rope_k_repeat)
        return super().__call__(x_q, x_k, x_v, rope=rope, mask=mask)


class MemoryAttentionLayer(nn.Module):
    """Official `TransformerDecoderLayerv2` as the tracker configures it (self-attention first,
    pre-norm, no PE on the self-attention or the cross-attention queries, PE on the cross-attention
    keys, ReLU FFN). Scanned call: (x, memory, memory_pos, memory_mask, cos, sin) -> (x, None)."""

    num_heads: int
    dim_feedforward: int
    num_obj_ptr_tokens: int = 0
    attention_impl: Optional[str] = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, memory, memory_pos, memory_mask, cos, sin):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        d = x.shape[-1]
        attn = lambda name, repeat: RoPEAttention(  # noqa: E731
            self.num_heads, qkv_features=d, out_features=d, rope_k_repeat=repeat,
            attention_impl=self.attention_impl, name=name, **kw,
        )
        x = P.constrain(x, (P.BATCH, P.LENGTH, P.ACT_EMBED))

        y = LayerNorm(name="norm1", **kw)(x)
        x = x + attn("self_attn", False)(y, y, y, cos, sin)

        y = LayerNorm(name="norm2", **kw)(x)
        mask = None if memory_mask is None else memory_mask[:, None, None, :]
        x = x + attn("cross_attn_image", True)(
            y, memory + memory_pos, memory, cos, sin, num_k_exclude_rope=self.num_obj_ptr_tokens, mask=mask
        )

        y = LayerNorm(name="norm3", **kw)(x)
        y = Dense(self.dim_feedforward, (P.EMBED, P.MLP), name="linear1", **kw)(y)
        y = Dense(d, (P.MLP, P.EMBED), name="linear2", **kw)(jax.nn.relu(y))
        return x + y, None


class MemoryAttention(nn.Module):
    """Official `TransformerEncoderCrossAttention` of the tracker (`tracker.transformer.encoder`):
    input PE at 0.1, `num_layers` scanned `MemoryAttentionLayer`s under `layers`, final `norm`."""

    d_model: int
    grid_size: int
    num_layers: int
    dim_feedforward: int
    num_heads: int = 1
    rope_theta: float = ROPE_THETA
    attention_impl: Optional[str] = None
    remat: str = "none"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def _check(self, curr, curr_pos, memory, memory_pos, num_obj_ptr_tokens, memory_mask) -> None:
        n = self.grid_size * self.grid_size
        if curr.ndim != 3 or curr.shape[1:] != (n, self.d_model):
            raise ValueError(f"curr must have shape (B, {n}, {self.d_model}) (a {self.grid_size}x{self.grid_size} "
                             f"grid), got {tuple(curr.shape)}")
        if curr_pos is not None and curr_pos.shape != curr.shape:
            raise ValueError(f"curr_pos {tuple(curr_pos.shape)} must match curr {tuple(curr.shape)}")
        if memory.ndim != 3 or memory.shape[0] != curr.shape[0]:
            raise ValueError(f"memory must have shape ({curr.shape[0]}, M, mem_dim), got {tuple(memory.shape)}")
        if memory_pos.shape != memory.shape:
            raise ValueError(f"memory_pos {tuple(memory_pos.shape)} must match memory {tuple(memory.shape)}")
        if not isinstance(num_obj_ptr_tokens, (int, np.integer)) or isinstance(num_obj_ptr_tokens, bool):
            raise TypeError(f"num_obj_ptr_tokens must be a static Python int, got {type(num_obj_ptr_tokens).__name__}")
        spatial = memory.shape[1] - num_obj_ptr_tokens
        if num_obj_ptr_tokens < 0 or spatial < 0 or spatial % n:
            raise ValueError(
                f"memory holds {memory.shape[1]} tokens with {num_obj_ptr_tokens} pointer tokens: the "
                f"{spatial} spatial tokens must be a whole number of {n}-token frames"
            )
        if memory_mask is not None and (memory_mask.shape != memory.shape[:2] or memory_mask.dtype != jnp.bool_):
            raise ValueError(f"memory_mask must be a bool {tuple(memory.shape[:2])} array (True = valid key), got "
                             f"{memory_mask.dtype} {tuple(memory_mask.shape)}")

    @nn.compact
    def __call__(
        self,
        curr: jax.Array,
        curr_pos: Optional[jax.Array],
        memory: jax.Array,
        memory_pos: jax.Array,
        num_obj_ptr_tokens: int = 0,
        memory_mask: Optional[jax.Array] = None,
    ) -> jax.Array:
        """curr, curr_pos (B, g*g, C); memory, memory_pos (B, M, mem_dim) laid out as
        [frames x g*g spatial tokens ; num_obj_ptr_tokens pointer tokens]; num_obj_ptr_tokens a
        static int; memory_mask (B, M) bool, True = valid key (None: all valid).
        Returns the conditioned current-frame features (B, g*g, C)."""
        self._check(curr, curr_pos, memory, memory_pos, num_obj_ptr_tokens, memory_mask)
        num_obj_ptr_tokens = int(num_obj_ptr_tokens)
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by {self.num_heads} heads")
        dtype = self.dtype or curr.dtype
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = curr.astype(dtype)
        if curr_pos is not None:
            x = x + INPUT_POS_SCALE * curr_pos.astype(dtype)
        cos, sin = tracker_rope_tables(self.d_model // self.num_heads, self.grid_size, self.rope_theta)
        Layers = scanned(MemoryAttentionLayer, length=self.num_layers, in_axes=(nn.broadcast,) * 5, remat=self.remat)
        x, _ = Layers(
            self.num_heads, self.dim_feedforward, num_obj_ptr_tokens=num_obj_ptr_tokens,
            attention_impl=self.attention_impl, name="layers", **kw,
        )(x, memory.astype(dtype), memory_pos.astype(dtype), memory_mask, cos, sin)
        return LayerNorm(name="norm", **kw)(x)


def memory_attention_from_config(cfg) -> MemoryAttention:
    """The tracker's memory attention at the sizes of a model config (`cfg.tracker`); 1 head and
    RoPE base 1e4 as the official builder hard-codes them."""
    t = cfg.tracker
    return MemoryAttention(
        d_model=t.d_model,
        grid_size=cfg.image_size // cfg.vit.patch_size,
        num_layers=t.memory_attention_layers,
        dim_feedforward=t.dim_feedforward,
        attention_impl=cfg.attention_impl,
        remat=cfg.remat,
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
    )
