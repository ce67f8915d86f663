"""Device mesh (data, fsdp, tensor) and logical-axis shardings.

* `make_mesh(mesh_cfg)`: sizes from the config (-1 = the remaining devices), built with
  `jax.make_mesh` and Auto axes (GSPMD propagation, so Linen modules need no explicit shardings).
* `logical_rules(cfg)`: the config's logical-name -> mesh-axis table.
* `param_shardings(abstract, mesh, rules)`: NamedShardings of a boxed (`nn.LogicallyPartitioned`)
  param tree. A dimension whose size is not divisible by its mesh axes is replicated instead (for
  instance the 3 input channels of the patch conv under fsdp=4); `explain_shardings` lists them.
* `activate(mesh, rules)`: context that installs both, for init / apply / jit tracing.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
Rules = tuple[tuple[str, Any], ...]


def resolve_mesh_shape(mesh_cfg: Any, num_devices: int) -> tuple[int, ...]:
    """(data, fsdp, tensor) sizes from a config (dict-like); at most one -1 takes what is left."""
    sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}")
    unknown = [i for i, s in enumerate(sizes) if s == -1]
    if len(unknown) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if unknown:
        if num_devices % known:
            raise ValueError(f"{num_devices} devices cannot be split into a mesh with fixed axes of product {known}")
        sizes[unknown[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, but {num_devices} are available"
        )
    return tuple(sizes)


def make_mesh(mesh_cfg: Any, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    devices = list(devices) if devices is not None else jax.devices()
    shape = resolve_mesh_shape(mesh_cfg, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def logical_rules(cfg: Any) -> Rules:
    return tuple((str(name), tuple(ax) if isinstance(ax, (list, tuple)) else ax) for name, ax in cfg.logical_axis_rules)


@contextlib.contextmanager
def activate(mesh: jax.sharding.Mesh, rules: Rules) -> Iterator[None]:
    """Installs the mesh (jax.set_mesh) and the logical rules (for constraints and boxed params)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def _axis_size(mesh: jax.sharding.Mesh, axes: Any) -> int:
    if axes is None:
        return 1
    if isinstance(axes, str):
        return mesh.shape[axes]
    return math.prod(mesh.shape[a] for a in axes)


def spec_for(names: Sequence[str | None], shape: Sequence[int], mesh: jax.sharding.Mesh, rules: Rules) -> PartitionSpec:
    """Mesh PartitionSpec of one param from its logical names; indivisible dims are replicated."""
    mesh_spec = nn.logical_to_mesh_axes(tuple(names), rules)
    out = []
    for dim, axes in zip(shape, tuple(mesh_spec) + (None,) * (len(shape) - len(mesh_spec))):
        out.append(axes if axes is not None and dim % _axis_size(mesh, axes) == 0 else None)
    return PartitionSpec(*out)


def _is_boxed(x: Any) -> bool:
    return isinstance(x, nn.LogicallyPartitioned)


def param_specs(abstract_boxed: Any, mesh: jax.sharding.Mesh, rules: Rules) -> Any:
    """PartitionSpecs (mesh axes) for a boxed abstract param tree; unboxed leaves are replicated."""

    def one(x):
        if _is_boxed(x):
            return spec_for(x.names, x.value.shape, mesh, rules)
        return PartitionSpec()

    return jax.tree_util.tree_map(one, abstract_boxed, is_leaf=_is_boxed)


def param_shardings(abstract_boxed: Any, mesh: jax.sharding.Mesh, rules: Rules) -> Any:
    return jax.tree_util.tree_map(
        lambda s: NamedSharding(mesh, s), param_specs(abstract_boxed, mesh, rules),
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def explain_shardings(abstract_boxed: Any, mesh: jax.sharding.Mesh, rules: Rules) -> list[str]:
    """Params whose rule-given sharding was replaced by replication because a size is indivisible."""
    notes = []
    leaves = jax.tree_util.tree_leaves_with_path(abstract_boxed, is_leaf=_is_boxed)
    for path, x in leaves:
        if not _is_boxed(x):
            continue
        wanted = nn.logical_to_mesh_axes(tuple(x.names), rules)
        got = spec_for(x.names, x.value.shape, mesh, rules)
        if tuple(wanted) != tuple(got)[: len(tuple(wanted))]:
            notes.append(f"{jax.tree_util.keystr(path)} {tuple(x.value.shape)}: rules {tuple(wanted)} -> {tuple(got)}")
    return notes


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int, rules: Rules) -> NamedSharding:
    """Sharding of a batch-leading array: dim 0 over the mesh axes of the 'batch' logical name."""
    axes = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules)
    return NamedSharding(mesh, PartitionSpec(*axes))


def bytes_per_device(abstract: Any, shardings: Any) -> int:
    """Bytes each device holds for a tree of ShapeDtypeStructs placed with `shardings`."""
    total = 0
    for x, s in zip(jax.tree_util.tree_leaves(abstract), jax.tree_util.tree_leaves(
            shardings, is_leaf=lambda v: isinstance(v, NamedSharding))):
        shard = s.shard_shape(tuple(x.shape))
        total += int(np.prod(shard)) * np.dtype(x.dtype).itemsize
    return total
