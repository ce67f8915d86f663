"""Loading official weights safely: `torch.load(weights_only=True)`, safetensors or .npz; never pickle."""

from __future__ import annotations

import os
from typing import Any

import numpy as np


def _to_numpy(value: Any, key: str) -> Any:
    if isinstance(value, np.ndarray):
        return value
    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None
    if torch is not None and isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.dtype == torch.bfloat16:
            import ml_dtypes

            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()
    raise TypeError(f"key {key}: expected a tensor, got {type(value).__name__}")


def load_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Reads an official checkpoint (`sam3.pt`, `.safetensors` or `.npz`) into numpy arrays.

    A `{"model": state_dict}` wrapper is unwrapped. `.pt` files are read with
    `torch.load(weights_only=True)`, which refuses arbitrary pickled objects.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(path, framework="np") as f:
                state = {k: f.get_tensor(k) for k in f.keys()}
        except TypeError:  # dtypes numpy cannot hold (bf16): go through torch
            with safe_open(path, framework="pt") as f:
                state = {k: _to_numpy(f.get_tensor(k), k) for k in f.keys()}
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            state = {k: z[k] for k in z.files}
    elif suffix in (".pt", ".pth", ".bin", ".ckpt"):
        try:
            import torch
        except ImportError as e:
            raise ImportError(f"reading {path} needs PyTorch (pip install torch), or convert it to safetensors") from e
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # weights_only refuses anything but tensors and containers
            raise ValueError(f"could not read {path} as a weights-only torch checkpoint: {e}") from e
        if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
            raw = raw["model"]
        if not isinstance(raw, dict):
            raise ValueError(f"{path} does not hold a state dict (got {type(raw).__name__})")
        state = {str(k): _to_numpy(v, str(k)) for k, v in raw.items()}
    else:
        raise ValueError(f"unsupported checkpoint format {suffix!r} for {path}; expected .pt, .safetensors or .npz")
    return state
