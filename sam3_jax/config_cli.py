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


CACHE_ENV = "SAM3_JAX_COMPILATION_CACHE"


def default_compilation_cache_dir() -> str:
    """$SAM3_JAX_COMPILATION_CACHE, else $XDG_CACHE_HOME/sam3_jax/xla (~/.cache/sam3_jax/xla)."""
    import os

    if os.environ.get(CACHE_ENV) is not None:
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sam3_jax", "xla")


def define_compilation_cache_flag() -> flags.FlagHolder:
    return flags.DEFINE_string(
        "compilation_cache", None,
        "Persistent XLA compilation cache directory, so that a second run of the same command does not "
        f"compile again (default: ${CACHE_ENV}, else ~/.cache/sam3_jax/xla; 'none' turns it off).",
    )


def enable_compilation_cache(directory: str | None = None) -> str | None:
    """Turns on JAX's persistent compilation cache in `directory` (default
    `default_compilation_cache_dir()`; '' or 'none' leaves it off). Every compiled program is kept,
    however fast it compiled: on a 2-core CPU the many small ones add up. Returns the directory used."""
    import os

    directory = default_compilation_cache_dir() if directory is None else directory
    if not directory or directory.lower() == "none":
        return None
    directory = os.path.abspath(os.path.expanduser(directory))
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory
