"""Multi-host start-up through JAX's own distributed runtime.

`initialize()` with no arguments lets `jax.distributed.initialize` detect the cluster (TPU pods,
SLURM, Open MPI, ...); pass coordinator / process count / process id to set them explicitly (for
example two local processes on 127.0.0.1). Only process 0 should write logs and pictures.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax


def initialize(
    coordinator_address: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
    local_device_ids: Optional[Sequence[int]] = None,
    *,
    timeout_s: int = 300,
) -> None:
    explicit = [coordinator_address, num_processes, process_id]
    if any(v is not None for v in explicit) and not all(v is not None for v in explicit):
        raise ValueError("pass coordinator_address, num_processes and process_id together (or none of them)")
    kwargs = {}
    if coordinator_address is not None:
        kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
    if local_device_ids is not None:
        kwargs["local_device_ids"] = list(local_device_ids)
    jax.distributed.initialize(initialization_timeout=timeout_s, **kwargs)


def is_main_process() -> bool:
    return jax.process_index() == 0
