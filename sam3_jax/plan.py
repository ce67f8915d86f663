"""`python -m sam3_jax.plan --config configs/sam3.py:full --mesh data=8,fsdp=32,tensor=1 --batch 256`

Prints the per-device memory of a training run (params, gradients, AdamW state, activation
estimate) without allocating weights. See `sam3_jax.parallel.plan`.
"""

from __future__ import annotations

from absl import app, flags, logging

from sam3_jax.config_cli import define_config_flag

_CONFIG = define_config_flag("configs/sam3.py:full")
_MESH = flags.DEFINE_string("mesh", "data=1,fsdp=1,tensor=1", "Mesh sizes, e.g. data=8,fsdp=32,tensor=1.")
_BATCH = flags.DEFINE_integer("batch", 1, "Global batch size (images).")


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    from sam3_jax.parallel.plan import parse_mesh, plan

    try:
        mesh = parse_mesh(_MESH.value)
    except ValueError as e:
        raise app.UsageError(str(e))
    if _BATCH.value < 1:
        raise app.UsageError("--batch must be >= 1")
    shards = mesh["data"] * mesh["fsdp"]
    if _BATCH.value % shards:
        raise app.UsageError(f"--batch {_BATCH.value} is not divisible by data x fsdp = {shards}")
    print(plan(_CONFIG.value, mesh, _BATCH.value).table())
    return 0


if __name__ == "__main__":
    app.run(main)
