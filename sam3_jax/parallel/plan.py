"""Memory planner: per-device bytes of params, gradients, optimizer state and activations for a
config, a mesh and a global batch, without allocating any weights (everything is `jax.eval_shape`
plus the shard shapes the logical-axis rules give). The mesh may be far larger than this machine:
only its shape is used.

Params / gradients / optimizer state are exact (the same shard shapes the sharded state gets;
dimensions that the rules would split unevenly are replicated, as in `parallel.mesh`). Activations
are an analytical estimate of what a train step keeps for the backward pass, dominated by the ViT
(see `activation_bytes`); treat it as a guide, and measure on the target hardware.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sam3_jax.parallel.mesh import MESH_AXES, Rules


@dataclasses.dataclass
class Plan:
    mesh: dict[str, int]
    global_batch: int
    per_device_batch: float
    params: int
    grads: int
    opt_state: int
    activations: int
    num_params: int

    @property
    def total(self) -> int:
        return self.params + self.grads + self.opt_state + self.activations

    def table(self) -> str:
        gib = lambda b: f"{b / 2**30:9.2f} GiB"  # noqa: E731
        mesh = ", ".join(f"{k}={v}" for k, v in self.mesh.items())
        return "\n".join([
            f"mesh ({mesh}) = {math.prod(self.mesh.values())} devices; global batch {self.global_batch} "
            f"({self.per_device_batch:g} per device); {self.num_params:,} parameters",
            f"  params        {gib(self.params)}",
            f"  gradients     {gib(self.grads)}",
            f"  optimizer     {gib(self.opt_state)}  (AdamW: two fp32 moments + count)",
            f"  activations   {gib(self.activations)}  (estimate)",
            f"  total         {gib(self.total)}  per device",
        ])


def _axis_size(mesh: dict[str, int], axes: Any) -> int:
    if axes is None:
        return 1
    if isinstance(axes, str):
        return mesh[axes]
    return math.prod(mesh[a] for a in axes)


def shard_shape(names, shape, mesh: dict[str, int], rules: Rules) -> tuple[int, ...]:
    spec = tuple(nn.logical_to_mesh_axes(tuple(names), rules)) + (None,) * len(shape)
    out = []
    for dim, axes in zip(shape, spec):
        size = _axis_size(mesh, axes)
        out.append(dim // size if dim % size == 0 else dim)
    return tuple(out)


def sharded_bytes(boxed_abstract: Any, mesh: dict[str, int], rules: Rules, dtype=None) -> int:
    """Per-device bytes of a boxed abstract param-shaped tree (unboxed leaves are replicated)."""
    total = 0
    is_boxed = lambda x: isinstance(x, nn.LogicallyPartitioned)  # noqa: E731
    for leaf in jax.tree_util.tree_leaves(boxed_abstract, is_leaf=is_boxed):
        value = leaf.value if is_boxed(leaf) else leaf
        names = leaf.names if is_boxed(leaf) else (None,) * len(value.shape)
        itemsize = np.dtype(dtype or value.dtype).itemsize
        total += int(np.prod(shard_shape(names, value.shape, mesh, rules))) * itemsize
    return total


def activation_bytes(model_cfg, per_device_batch: float, remat: str, act_itemsize: int, tensor: int = 1) -> int:
    """Bytes a train step keeps for backward, per device (estimate).

    ViT, per block and token (width C, MLP hidden M, heads H): without remat about 8 C + 3 M values
    (residual stream, two LayerNorm outputs, q/k/v, attention output, projection, MLP pre- and
    post-activation) plus the softmax probabilities, H x window^2 per token in windowed blocks and
    H x grid^2 in global blocks; with remat "full" only the block input (C) per block, plus one
    block's worth recomputed. Tensor parallelism splits the head- and MLP-sized parts (q/k/v,
    probabilities, MLP activations) by the `tensor` size. The text encoder, necks and detector heads
    are estimated the same way and are small next to the trunk at 1008 px.
    """
    v = model_cfg.vit
    grid = model_cfg.image_size // v.patch_size
    tokens = grid * grid
    c, m, h = v.width, int(v.width * v.mlp_ratio), v.heads
    n_global = len(v.global_blocks)
    n_window = v.depth - n_global
    per_block = tokens * (5 * c + (3 * c + 3 * m) / tensor)
    probs = (n_window * tokens * h * v.window_size**2 + n_global * tokens * h * tokens) / tensor
    if remat == "full":
        vit = v.depth * tokens * c + per_block + tokens * h * tokens / tensor
    else:
        vit = v.depth * per_block + probs
    t = model_cfg.text
    text = t.layers * t.context_length * (8 * t.width + 3 * 4 * t.width)
    d = model_cfg.d_model
    neck = 2 * sum(int((grid * s) ** 2) for s in model_cfg.neck.scale_factors) * d * 3
    heads = (model_cfg.encoder_layers * tokens * (8 * d + 3 * model_cfg.dim_feedforward)
             + model_cfg.num_queries * (4 * grid) ** 2 * 2)  # decoder is small; masks at 4 x grid
    return int((vit + text + neck + heads) * per_device_batch * act_itemsize)


def plan(cfg, mesh: dict[str, int], global_batch: int) -> Plan:
    from sam3_jax.model.sam3_image import Sam3Image

    rules = tuple((n, tuple(a) if isinstance(a, (list, tuple)) else a) for n, a in cfg.logical_axis_rules)
    mesh = {a: int(mesh[a]) for a in MESH_AXES}
    model_cfg = cfg.model
    s, t = model_cfg.image_size, model_cfg.text.context_length
    with nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(
            Sam3Image(model_cfg).init, jax.random.key(0),
            jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32), jax.ShapeDtypeStruct((1, t), jnp.int32),
            jax.ShapeDtypeStruct((1, 1, 4), jnp.float32), jax.ShapeDtypeStruct((1, 1), jnp.int32),
            jax.ShapeDtypeStruct((1, 1), jnp.bool_),
        )["params"]
    params = sharded_bytes(boxed, mesh, rules)
    grads = params
    opt_state = 2 * sharded_bytes(boxed, mesh, rules, dtype=jnp.float32) + 4  # mu, nu, count
    batch_shards = mesh["data"] * mesh["fsdp"]
    per_device = global_batch / batch_shards
    act = activation_bytes(model_cfg, per_device, model_cfg.remat, np.dtype(model_cfg.dtype).itemsize,
                           tensor=mesh["tensor"])
    n = sum(int(np.prod(x.value.shape)) for x in jax.tree_util.tree_leaves(
        boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)))
    return Plan(mesh, global_batch, per_device, params, grads, opt_state, act, n)


def parse_mesh(spec: str) -> dict[str, int]:
    """'data=8,fsdp=32,tensor=1' -> dict; missing axes default to 1."""
    out = {a: 1 for a in MESH_AXES}
    for part in filter(None, spec.split(",")):
        if "=" not in part:
            raise ValueError(f"--mesh expects axis=size pairs like data=8,fsdp=32,tensor=1; got {part!r}")
        k, v = part.split("=", 1)
        if k.strip() not in out:
            raise ValueError(f"unknown mesh axis {k!r}; expected {MESH_AXES}")
        out[k.strip()] = int(v)
        if out[k.strip()] < 1:
            raise ValueError(f"mesh axis {k} must be >= 1")
    return out
