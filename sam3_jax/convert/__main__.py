"""`convert_weights.py --checkpoint sam3.pt --output DIR [--config configs/sam3.py:full] [--dtype float32|bfloat16]`

Converts every key of the official checkpoint strictly into one Orbax param tree in DIR (the image
detector, and the tracker under `tracker` when the checkpoint holds one: `tracker.*` in sam3.pt,
`inst_interactive_predictor.model.*` in an image model with instance interactivity) plus
`manifest.json` (source sha256, model config, key and parameter counts, dtype, and the official
parts not converted: none for sam3.pt).
Exit status 1 on a conversion error (the message names the key), 2 on bad usage.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from sam3_jax.config_cli import define_config_flag

_CONFIG = define_config_flag("configs/sam3.py:full")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Official checkpoint: sam3.pt, .safetensors or .npz.")
_OUTPUT = flags.DEFINE_string("output", None, "Output directory (must not exist unless --overwrite).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Stored parameter dtype.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing output directory.")


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    if not _CHECKPOINT.value or not _OUTPUT.value:
        raise app.UsageError("--checkpoint and --output are required")
    import jax.numpy as jnp
    from tqdm import tqdm

    from sam3_jax.convert.checkpoint import build_manifest, save_converted
    from sam3_jax.convert.convert import ConversionError, convert_image_model
    from sam3_jax.convert.load import load_state_dict

    cfg = _CONFIG.value.model
    try:
        print(f"reading {_CHECKPOINT.value}")
        state = load_state_dict(_CHECKPOINT.value)
        params, report = convert_image_model(
            state,
            cfg,
            param_dtype=jnp.dtype(_DTYPE.value),
            progress=lambda rules: tqdm(rules, desc="converting", unit="module"),
        )
        print(report.summary())
        manifest = build_manifest(source=_CHECKPOINT.value, cfg=cfg, report=report, dtype=_DTYPE.value, params=params)
        save_converted(_OUTPUT.value, params, manifest, overwrite=_OVERWRITE.value)
    except (ConversionError, FileNotFoundError, FileExistsError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {_OUTPUT.value} ({manifest['num_params']:,} parameters, {_DTYPE.value})")
    return 0


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
