"""SAM 3 experiment config: `--config configs/sam3.py:full` (released sizes) or `:tiny`.

Model sizes come from `sam3_jax.config.model_config`; this file adds numerics, mesh and the
logical-axis rules that map the modules' logical axis names onto mesh axes.
"""

import ml_collections

from sam3_jax.config import LOGICAL_AXIS_RULES, model_config


def get_config(arg: str = "full") -> ml_collections.ConfigDict:
    variant = arg or "full"
    cfg = ml_collections.ConfigDict()
    cfg.model = model_config(variant)
    # Numerics. Parity checks run with fp32 and the highest matmul precision.
    cfg.matmul_precision = "highest"
    # Device mesh (data, fsdp, tensor); -1 takes the remaining devices.
    cfg.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    # Logical axis name -> mesh axis (or None = replicated).
    cfg.logical_axis_rules = LOGICAL_AXIS_RULES
    cfg.seed = 0
    return cfg
