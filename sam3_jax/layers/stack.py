"""Repeated blocks: `nn.scan` over a stacked 'layers' param axis, with optional `nn.remat`.

Scanning keeps compile time flat in depth; the params of the L blocks live in one tree whose
leaves have a leading axis of size L (logical axis name 'layers').
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax

from sam3_jax.layers import partitioning as P

REMAT_POLICIES = {
    "none": None,
    "full": "full",
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
}


def scanned(block_cls: type[nn.Module], *, length: int, in_axes: Sequence[Any], remat: str = "none"):
    """Returns a scanned (and optionally rematerialised) version of `block_cls`.

    The block must have the signature `__call__(self, carry, *xs) -> (carry, y)`.
    """
    if remat not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {remat!r}; expected one of {sorted(REMAT_POLICIES)}")
    cls = block_cls
    if remat != "none":
        policy = REMAT_POLICIES[remat]
        cls = nn.remat(cls, prevent_cse=False, policy=None if policy == "full" else policy)
    return nn.scan(
        cls,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=tuple(in_axes),
        length=length,
        metadata_params={nn.PARTITION_NAME: P.LAYERS},
    )
