"""The sharded train step: forward, loss, gradients, optimizer update, under one `jit`.

`make_train_step(model, tx, loss_fn, mesh, rules, state_shardings, batch_shardings)` returns
`step(state, batch) -> (state, metrics)`; the state buffers are donated. `loss_fn(outputs, batch)`
returns (scalar loss, dict of scalar metrics). The model's activation constraints use the logical
rules, installed around tracing.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import optax

from sam3_jax.parallel.mesh import Rules, activate

MODEL_INPUTS = ("images", "tokens", "boxes", "box_labels", "box_mask")


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    loss_fn: Callable[[dict, dict], tuple[jax.Array, dict]],
    mesh,
    rules: Rules,
    state_shardings: Any,
    batch_shardings: Any,
    dac: bool = False,
):
    """dac: train with the official DAC one-to-many queries (the loss then adds the o2m terms)."""

    def step(state, batch):
        inputs = [batch[k] for k in MODEL_INPUTS]

        def objective(params):
            outputs = model.apply({"params": params}, *inputs, dac=dac)
            return loss_fn(outputs, batch)

        (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **metrics}
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

    jitted = jax.jit(step, in_shardings=(state_shardings, batch_shardings),
                     out_shardings=(state_shardings, None), donate_argnums=(0,))

    def run(state, batch):
        with activate(mesh, rules):
            return jitted(state, batch)

    def lower(state, batch):  # for cost analysis (benchmarks): the lowered step under the mesh and rules
        with activate(mesh, rules):
            return jitted.lower(state, batch)

    run.lower = lower
    return run


def make_forward(model: nn.Module, mesh, rules: Rules, param_shardings: Any, batch_shardings: Any):
    """Jitted sharded forward pass over a batch dict (the model inputs)."""

    def fwd(params, batch):
        return model.apply({"params": params}, *[batch[k] for k in MODEL_INPUTS])

    jitted = jax.jit(fwd, in_shardings=(param_shardings, batch_shardings))

    def run(params, batch):
        with activate(mesh, rules):
            return jitted(params, batch)

    return run
