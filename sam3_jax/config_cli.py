"""Shared command-line plumbing: `--config=configs/NAME.py:arg` plus `--config.field=value` overrides."""

from __future__ import annotations

import jax
from absl import flags
from ml_collections import config_flags


def define_config_flag(default: str | None = None) -> flags.FlagHolder:
    return config_flags.DEFINE_config_file(
        "config", default, "Config file, e.g. configs/sam3.py:tiny; override fields with --config.x=y.",
        lock_config=True,
    )


def apply_numerics(cfg) -> None:
    """Process-wide numerics from the config (matmul precision)."""
    prec = cfg.get("matmul_precision", None)
    if prec:
        jax.config.update("jax_default_matmul_precision", prec)
