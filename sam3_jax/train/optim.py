"""Optimiser of the official SAM 3 fine-tuning recipe, in optax.

* AdamW (torch defaults: b1 0.9, b2 0.999, eps 1e-8) with weight decay 0.1, except on biases and
  normalisation parameters (LayerNorm / GroupNorm `scale` and `bias`) and on the tracker prompt
  encoder's random-Fourier matrix (an official buffer, not a parameter: its forward stops the
  gradient, and without decay AdamW leaves it exactly as loaded).
* Parameter groups with their own learning rates: the vision backbone (trunk + necks), the language
  backbone, and everything else (fusion encoder, decoder, heads), each times `lr_scale`.
* Layer-wise learning-rate decay on the trunk: scale decay^(depth + 1 - id), id 0 for the patch
  embedding and ln_pre, id k + 1 for block k, and 1.0 for `pos_embed` (as the official recipe
  overrides it). Blocks are scanned, so the scale of a stacked leaf varies along its layer axis.
* Global-norm gradient clipping (0.1), then the inverse-square-root schedule with linear warm-up
  and cool-down (official `InverseSquareRootParamScheduler`).
* Freezing presets: `freeze=("trunk", "text")` zeroes the updates of those parts.

Group learning rates and layer scales multiply AdamW's whole update (direction and decay term),
exactly like a torch param group's lr.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax

NO_DECAY_LEAVES = ("bias", "scale", "positional_encoding_gaussian_matrix")
FREEZE_PRESETS = {
    "trunk": ("backbone", "vision_backbone", "trunk"),
    "vision": ("backbone", "vision_backbone"),
    "text": ("backbone", "language_backbone"),
}


def inverse_sqrt_schedule(base_lr: float, warmup_steps: int, cooldown_steps: int, timescale: int, total_steps: int):
    """Official InverseSquareRootParamScheduler evaluated at step t of a run of `total_steps`."""

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        shift = timescale - warmup_steps
        lr = jnp.where(step > warmup_steps, base_lr / jnp.sqrt((step + shift) / timescale), base_lr)
        if warmup_steps:
            lr = lr * jnp.minimum(1.0, step / warmup_steps)
        if cooldown_steps:
            lr = lr * jnp.minimum(1.0, (total_steps - step) / cooldown_steps)
        return lr

    return schedule


def _path_names(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def group_of(names: Sequence[str]) -> str:
    if names[:2] == ("backbone", "vision_backbone"):
        return "vision"
    if names[:2] == ("backbone", "language_backbone"):
        return "language"
    return "transformer"


def lr_scales(params: Any, cfg) -> Any:
    """Per-leaf multipliers (arrays broadcastable to the leaf): group lr x layer decay x freezing."""
    o = cfg
    group_lr = {"vision": o.lr_vision, "language": o.lr_language, "transformer": o.lr_transformer}
    frozen = [FREEZE_PRESETS[f] for f in (o.freeze or ())]

    def one(path, leaf):
        names = _path_names(path)
        s = group_lr[group_of(names)] * o.lr_scale
        if any(names[: len(f)] == f for f in frozen):
            return jnp.zeros((1,) * leaf.ndim, jnp.float32)
        if names[:3] == ("backbone", "vision_backbone", "trunk") and o.layer_decay != 1.0:
            if names[3] == "blocks":
                n = leaf.shape[0]
                ids = jnp.arange(1, n + 1, dtype=jnp.float32)  # block k -> id k + 1
                scale = o.layer_decay ** ((n + 1) - ids)
                return (s * scale).reshape((n,) + (1,) * (leaf.ndim - 1))
            if names[3] != "pos_embed":
                n = _trunk_depth(params)
                return jnp.full((1,) * leaf.ndim, s * o.layer_decay ** (n + 1), jnp.float32)
        return jnp.full((1,) * leaf.ndim, s, jnp.float32)

    return jax.tree_util.tree_map_with_path(one, params)


def _trunk_depth(params: Any) -> int:
    blocks = params["backbone"]["vision_backbone"]["trunk"]["blocks"]
    return int(jax.tree_util.tree_leaves(blocks)[0].shape[0])


def decay_mask(params: Any) -> Any:
    return jax.tree_util.tree_map_with_path(lambda p, _: _path_names(p)[-1] not in NO_DECAY_LEAVES, params)


def scale_by_tree(scales: Any) -> optax.GradientTransformation:
    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        return jax.tree_util.tree_map(lambda u, s: u * s.astype(u.dtype), updates, scales), state

    return optax.GradientTransformation(init, update)


def make_optimizer(params: Any, cfg, total_steps: int) -> optax.GradientTransformation:
    """cfg: the `optim` ConfigDict (see configs/synthetic.py)."""
    schedule = inverse_sqrt_schedule(1.0, cfg.warmup_steps, cfg.cooldown_steps, cfg.timescale, total_steps)
    return optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                    mask=decay_mask(params)),
        scale_by_tree(lr_scales(params, cfg)),
    )


def official_defaults() -> dict:
    """The released fine-tuning recipe (sam3/train/configs): lrs before lr_scale, and the rest."""
    return dict(
        lr_transformer=8e-4, lr_vision=2.5e-4, lr_language=5e-5, lr_scale=0.1, layer_decay=0.9,
        weight_decay=0.1, clip_norm=0.1, b1=0.9, b2=0.999, eps=1e-8, warmup_steps=20, cooldown_steps=20,
        timescale=20, freeze=(),
    )


