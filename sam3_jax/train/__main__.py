"""Command line of `train.py` (see sam3_jax/train/loop.py)."""

from __future__ import annotations

import json
import sys

from absl import app, flags, logging

from sam3_jax.config_cli import define_compilation_cache_flag, define_config_flag, enable_compilation_cache

_CONFIG = define_config_flag("configs/synthetic.py")
_WORKDIR = flags.DEFINE_string("workdir", "runs/synthetic", "Checkpoints, metrics.jsonl, pictures, summary.json.")
_INIT = flags.DEFINE_string("init_from", None, "Start from the params of a converted checkpoint directory.")
_COORD = flags.DEFINE_string("coordinator_address", None, "Multi-host: coordinator host:port (else auto-detect).")
_NPROC = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's id.")
_DIST = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize (auto-detected cluster).")
_CACHE = define_compilation_cache_flag()


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    enable_compilation_cache(_CACHE.value)
    if _DIST.value or _COORD.value:
        from sam3_jax.parallel.distributed import initialize

        initialize(_COORD.value, _NPROC.value, _PID.value)
    from sam3_jax.train.loop import train

    summary = train(_CONFIG.value, _WORKDIR.value, init_from=_INIT.value)
    ev = summary["eval"]
    print(json.dumps(summary, indent=2))
    parts = [f"validation (unseen images) cgF1 {ev['val/cgF1']:.1f} (IL_MCC {ev['val/IL_MCC']:.3f}, "
             f"pmF1 {ev['val/pmF1']:.3f})"]
    if "held_out/cgF1" in ev:
        parts.append(f"held-out colour-shape combinations cgF1 {ev['held_out/cgF1']:.1f} "
                     f"(IL_MCC {ev['held_out/IL_MCC']:.3f})")
    print("; ".join(parts) + f" after {summary['step']} steps, {summary['minutes']} min")
    return 0


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    sys.exit(run())
