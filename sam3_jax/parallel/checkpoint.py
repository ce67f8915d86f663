"""Orbax checkpoints of the sharded train state, restorable onto any mesh or device count.

Every process writes its own shards (multi-host safe). Restoring always goes through a target tree
of ShapeDtypeStructs carrying the *new* shardings (`parallel.state.abstract_train_state`), so a
state saved on (2, 2, 2) restores onto (1, 8, 1) or onto a single device.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import orbax.checkpoint as ocp


def manager(directory: str, *, max_to_keep: int = 3, async_save: bool = True) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def latest_step(directory: str) -> Optional[int]:
    """The newest finished checkpoint step under `directory`, or None. Creates nothing where there is
    no checkpoint directory (a CheckpointManager would create it)."""
    if not os.path.isdir(directory):
        return None
    mngr = manager(directory, async_save=False)
    try:
        return mngr.latest_step()
    finally:
        mngr.close()


def save(mngr: ocp.CheckpointManager, step: int, state: Any, *, extra: Optional[dict] = None) -> bool:
    items = {"state": ocp.args.StandardSave(state)}
    if extra is not None:
        items["meta"] = ocp.args.JsonSave(extra)
    return mngr.save(step, args=ocp.args.Composite(**items))


def restore(mngr: ocp.CheckpointManager, target: Any, step: Optional[int] = None, *, with_meta: bool = False):
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {mngr.directory}")
    items = {"state": ocp.args.StandardRestore(target)}
    if with_meta:
        items["meta"] = ocp.args.JsonRestore()
    out = mngr.restore(step, args=ocp.args.Composite(**items))
    return (out["state"], out["meta"]) if with_meta else out["state"]
