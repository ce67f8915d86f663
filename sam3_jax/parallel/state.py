"""Sharded parameters and train state, created directly in their shardings.

    mesh = make_mesh(cfg.mesh); rules = logical_rules(cfg)
    params, p_sh = init_params(model, rng, inputs, mesh, rules)   # jit(init, out_shardings=...)
    state, s_sh = init_train_state(params, p_sh, tx, mesh)        # jit(tx.init, out_shardings=...)

Nothing is materialised on one host: the initialisers run under `jit` with `out_shardings`, so each
device only ever holds its own shards. The state is a plain dict {params, opt_state, step}, which
Orbax saves and restores onto any other mesh (`abstract_train_state` gives the restore target).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from sam3_jax.parallel.mesh import Rules, activate, param_shardings


def _zeros(specs: Sequence[jax.ShapeDtypeStruct]) -> list[jax.Array]:
    return [jnp.zeros(s.shape, s.dtype) for s in specs]


def abstract_params(model: nn.Module, input_specs: Sequence[jax.ShapeDtypeStruct], mesh, rules: Rules) -> Any:
    """Boxed (logically partitioned) abstract params, without allocating anything."""
    with activate(mesh, rules):
        return jax.eval_shape(lambda r: model.init(r, *_zeros(input_specs)), jax.random.key(0))["params"]


def init_params(
    model: nn.Module, rng: jax.Array, input_specs: Sequence[jax.ShapeDtypeStruct], mesh, rules: Rules,
    transform: Optional[Callable[[Any], Any]] = None,
) -> tuple[Any, Any]:
    """Initialises params directly into their shardings. Returns (params, shardings).

    transform: params -> params applied inside the same jit (e.g. `official_init` re-drawing the
    module's own init), so only the final params are ever materialised."""
    shardings = init_shardings(model, input_specs, mesh, rules)

    def init(r):
        params = nn.meta.unbox(model.init(r, *_zeros(input_specs))["params"])
        return params if transform is None else transform(params)

    with activate(mesh, rules):
        return jax.jit(init, out_shardings=shardings)(rng), shardings


def init_shardings(model: nn.Module, input_specs: Sequence[jax.ShapeDtypeStruct], mesh, rules: Rules) -> Any:
    """The param shardings `init_params` would return, without drawing anything."""
    return abstract_params_and_shardings(model, input_specs, mesh, rules)[1]


def abstract_params_and_shardings(
    model: nn.Module, input_specs: Sequence[jax.ShapeDtypeStruct], mesh, rules: Rules
) -> tuple[Any, Any]:
    """(unboxed ShapeDtypeStruct params, their shardings) from one abstract init: the targets a
    checkpoint restore needs, with nothing drawn."""
    boxed = abstract_params(model, input_specs, mesh, rules)
    return unboxed_abstract(boxed), param_shardings(boxed, mesh, rules)


def place_params(host_params: Any, shardings: Any) -> Any:
    """Host (e.g. converted) params -> global arrays in `shardings`, each process filling only its
    addressable shards from the host copy (works on one or many processes)."""

    def put(x, s):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])

    return jax.tree_util.tree_map(put, host_params, shardings)


def opt_state_shardings(tx: optax.GradientTransformation, params_abstract: Any, p_shardings: Any, mesh) -> Any:
    """Optimizer-state shardings: param-shaped leaves (moments) follow their param; the rest
    (counters, scalars) are replicated."""
    state_abstract = jax.eval_shape(tx.init, params_abstract)
    replicated = NamedSharding(mesh, PartitionSpec())
    return optax.tree_map_params(
        tx, lambda _, s: s, state_abstract, p_shardings,
        transform_non_params=lambda _: replicated, is_leaf=lambda x: isinstance(x, NamedSharding),
    )


def train_state_shardings(tx: optax.GradientTransformation, params_abstract: Any, p_shardings: Any, mesh) -> dict:
    return {
        "params": p_shardings,
        "opt_state": opt_state_shardings(tx, params_abstract, p_shardings, mesh),
        "step": NamedSharding(mesh, PartitionSpec()),
    }


def init_train_state(params: Any, p_shardings: Any, tx: optax.GradientTransformation, mesh) -> tuple[dict, dict]:
    """{params, opt_state, step} with the optimizer state created in its shardings."""
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    shardings = train_state_shardings(tx, abstract, p_shardings, mesh)
    opt_state = jax.jit(tx.init, out_shardings=shardings["opt_state"])(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), shardings["step"])
    return {"params": params, "opt_state": opt_state, "step": step}, shardings


def abstract_train_state(params_abstract: Any, tx: optax.GradientTransformation, shardings: dict) -> dict:
    """ShapeDtypeStructs carrying `shardings`: the Orbax restore target for any mesh."""
    state = {
        "params": params_abstract,
        "opt_state": jax.eval_shape(tx.init, params_abstract),
        "step": jax.ShapeDtypeStruct((), jnp.int32),
    }
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
    )


def unboxed_abstract(boxed: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nn.meta.unbox(boxed)
    )


LossFn = Callable[[Any, Any], tuple[jax.Array, dict]]
