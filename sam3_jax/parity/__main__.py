"""`python -m sam3_jax.parity --config configs/sam3.py:tiny --seed 0 [--checkpoint sam3.pt]`

Builds the official SAM 3 model on the CPU (random weights plus per-tensor noise, or the weights of
--checkpoint), converts it with sam3_jax's converter, runs both on the same real photos and prompts
and prints a per-stage table of max abs / max rel errors; writes a JSON report (--report). Exits 1
if any stage exceeds its tolerance (max abs error <= tolerance x max(1, max |official|): fp32
rounding grows with the magnitude of the values), 2 on bad usage.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from sam3_jax.config_cli import apply_numerics, define_config_flag

_CONFIG = define_config_flag("configs/sam3.py:tiny")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random official weights and of the input choice.")
_BATCH = flags.DEFINE_integer("batch", 2, "Batch size (images and prompts).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Official sam3.pt (or .safetensors / .npz) to use instead of random weights.")
_TOL = flags.DEFINE_float("tolerance", 1e-5, "Max abs error allowed per float encoder stage, times max |official| where that exceeds 1.")
_DET_TOL = flags.DEFINE_float("detector_tolerance", 1e-4, "Max abs error allowed per detector output, times max |official| where that exceeds 1.")
_REPORT = flags.DEFINE_string("report", None, "Where to write the JSON report (default: print only).")
_TRACKER = flags.DEFINE_bool("tracker", True, "Also compare the tracker stages (prompt encoder, mask decoder, memory "
                              "encoder, memory attention, object pointer, track steps without / with memory).")
_TEXTS = flags.DEFINE_multi_string("text", None, "Text prompt(s) (repeat the flag); default: two built-in phrases.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    cfg = _CONFIG.value
    apply_numerics(cfg)
    if _BATCH.value < 1:
        raise app.UsageError("--batch must be >= 1")
    from sam3_jax.parity.run import run_parity, write_report

    report = run_parity(
        cfg.model,
        seed=_SEED.value,
        batch=_BATCH.value,
        texts=_TEXTS.value,
        checkpoint=_CHECKPOINT.value,
        tolerance=_TOL.value,
        detector_tolerance=_DET_TOL.value,
        tracker=_TRACKER.value,
    )
    if _REPORT.value:
        write_report(report, _REPORT.value)
        print(f"report written to {_REPORT.value}")
    return 0 if report["ok"] else 1


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    sys.exit(run())
