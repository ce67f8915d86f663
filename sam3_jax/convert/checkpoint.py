"""Writing and reading converted checkpoints: an Orbax param tree plus `manifest.json`.

The output directory is written under a temporary name next to its final place and renamed only
when complete, so a failed conversion never leaves a half-written directory behind.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any

import jax
import ml_collections
import numpy as np

MANIFEST = "manifest.json"
PARAMS_DIR = "params"
FORMAT_VERSION = 1


def sha256_file(path: str, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_converted(out_dir: str, params: Any, manifest: dict[str, Any], *, overwrite: bool = False) -> None:
    import orbax.checkpoint as ocp

    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir):
        if not overwrite:
            raise FileExistsError(f"output directory already exists: {out_dir} (pass --overwrite to replace it)")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.partial-", dir=parent)
    try:
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(os.path.join(tmp, PARAMS_DIR), params)
        ckptr.wait_until_finished()
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_manifest(ckpt_dir: str) -> dict[str, Any]:
    path = os.path.join(ckpt_dir, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"not a converted sam3_jax checkpoint (no {MANIFEST}): {ckpt_dir}")
    with open(path) as f:
        return json.load(f)


def load_converted(ckpt_dir: str, target: Any | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores params (into `target`'s shapes/shardings if given) and returns (params, manifest)."""
    import orbax.checkpoint as ocp

    manifest = read_manifest(ckpt_dir)
    ckptr = ocp.StandardCheckpointer()
    path = os.path.join(os.path.abspath(ckpt_dir), PARAMS_DIR)
    params = ckptr.restore(path, target) if target is not None else ckptr.restore(path)
    return params, manifest


def config_to_json(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(cfg.to_json_best_effort())


def build_manifest(*, source: str, cfg, report, dtype: str, params: Any) -> dict[str, Any]:
    leaves = jax.tree_util.tree_leaves(params)
    return {
        "format_version": FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": {"path": os.path.abspath(source), "sha256": sha256_file(source)},
        "model_config": config_to_json(cfg),
        "dtype": dtype,
        "num_params": int(sum(int(np.prod(x.shape)) for x in leaves)),
        "num_param_arrays": len(leaves),
        "conversion": report.to_json(),
        "not_converted": {part: len(keys) for part, keys in report.pending.items()},
        # whether the params hold the tracker (clicks, video): False for a detector-only checkpoint
        "tracker": isinstance(params, dict) and "tracker" in params,
    }
