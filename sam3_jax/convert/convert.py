"""Strict conversion of an official SAM 3 state dict into the Flax param tree.

Every official key is either consumed by a rule, listed as recomputed (RoPE tables, checked against
our own tables), or belongs to a part that is not built yet (reported by part); anything else is an
error. Every Flax param must be filled exactly once. Shapes are checked against the shape each Flax
leaf implies before any data is moved, and dtypes must be floating. Every error names the key.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from sam3_jax.convert.layouts import LeafMap
from sam3_jax.convert.rule import Rule
from sam3_jax.convert.rules import PENDING_FOR_BACKBONE, PENDING_FOR_IMAGE_MODEL, backbone_rules, image_model_rules


class ConversionError(ValueError):
    """A checkpoint does not match the model; the message names the offending key or param."""


class MissingKeyError(ConversionError):
    pass


class UnexpectedKeyError(ConversionError):
    pass


class ShapeMismatchError(ConversionError):
    pass


class DtypeError(ConversionError):
    pass


class UnfilledParamError(ConversionError):
    pass


@dataclasses.dataclass(frozen=True)
class KeySpec:
    """Shape and dtype of a source tensor, for shape-only planning (no data)."""

    shape: tuple[int, ...]
    dtype: Any


@dataclasses.dataclass
class ConversionReport:
    consumed: list[str]
    recomputed: list[str]
    pending: dict[str, list[str]]  # part description -> official keys (image-model layout)
    num_params: int
    num_source_elements: int  # elements of the consumed (stored) official tensors

    def summary(self) -> str:
        lines = [
            f"consumed {len(self.consumed)} official tensors into {self.num_params:,} Flax parameters",
            f"recomputed (not stored) {len(self.recomputed)} tensors (RoPE freqs_cis tables)",
        ]
        for part, keys in sorted(self.pending.items()):
            lines.append(f"not built yet: {part}: {len(keys)} tensors")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "consumed": len(self.consumed),
            "recomputed": len(self.recomputed),
            "pending": {k: len(v) for k, v in self.pending.items()},
            "num_params": self.num_params,
            "num_source_elements": self.num_source_elements,
        }


_FLOAT_KINDS = ("f",)


def _is_float(dtype: Any) -> bool:
    d = np.dtype(dtype)
    return d.kind in _FLOAT_KINDS or d == jnp.bfloat16


def _is_complex(dtype: Any) -> bool:
    return np.dtype(dtype).kind == "c"


def normalize_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    """`sam3.pt` layout (detector./tracker.) -> image-model layout (detector. removed)."""
    out: dict[str, Any] = {}
    for k, v in state.items():
        nk = k[len("detector."):] if k.startswith("detector.") else k
        if nk in out:
            raise ConversionError(f"duplicate key after removing the 'detector.' prefix: {k}")
        out[nk] = v
    return out


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        path = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            flat.update(_flatten(v, path))
        else:
            flat[path] = v
    return flat


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, v in flat.items():
        node = tree
        parts = path.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return tree


def _join(prefix: str, leaf: str, sep: str) -> str:
    return f"{prefix}{sep}{leaf}" if leaf else prefix


def _leaf_targets(rule: Rule, lm: LeafMap, targets: Mapping[str, Any]) -> list[str] | None:
    """Flax paths this leaf fills, or None if the target module has no such leaf (e.g. no bias)."""
    paths = [_join(rule.dst, d, "/") for d in lm.dst]
    present = [p in targets for p in paths]
    if all(present):
        return paths
    if not any(present):
        return None
    missing = [p for p, ok in zip(paths, present) if not ok]
    raise UnfilledParamError(f"rule {rule.src} -> {rule.dst}: target params {missing} do not exist")


def _num_layers(rule: Rule, targets: Mapping[str, Any]) -> int:
    for lm in rule.layout.leaves:
        for d in lm.dst:
            path = _join(rule.dst, d, "/")
            if path in targets:
                return int(targets[path].shape[0])
    raise UnfilledParamError(f"rule {rule.src} -> {rule.dst}: no target params under {rule.dst}")


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def _check_tensor(key: str, value: Any, expected: tuple[int, ...] | None, *, complex_ok: bool = False) -> None:
    dtype = value.dtype
    if complex_ok and _is_complex(dtype):
        pass
    elif not _is_float(dtype):
        raise DtypeError(f"key {key}: expected a floating-point tensor, got dtype {np.dtype(dtype).name}")
    if expected is not None and _shape(value) != tuple(expected):
        raise ShapeMismatchError(f"key {key}: expected shape {tuple(expected)}, got {_shape(value)}")


def convert(
    state: Mapping[str, Any],
    target_shapes: Mapping[str, Any],
    rules: Iterable[Rule],
    *,
    param_dtype: Any = jnp.float32,
    dry_run: bool = False,
    rope_check=None,
    pending_parts: Mapping[str, str] = PENDING_FOR_IMAGE_MODEL,
) -> tuple[dict[str, Any], ConversionReport]:
    """Converts `state` (official key -> array or KeySpec) into a nested param dict.

    target_shapes: nested dict of the Flax params (arrays or ShapeDtypeStructs) to fill.
    dry_run: check keys, shapes and dtypes only and return ShapeDtypeStructs.
    rope_check: optional callable(key, value) that validates a recomputed table.
    pending_parts: official key prefix -> part name; unconsumed keys under these prefixes are
    reported by part (parts this conversion does not cover); any other unconsumed key is an error.
    """
    state = normalize_keys(state)
    targets = _flatten(target_shapes)
    filled: dict[str, Any] = {}
    consumed: set[str] = set()
    recomputed: list[str] = []

    def take(key: str, rule: Rule) -> Any:
        if key not in state:
            raise MissingKeyError(f"missing key {key} (needed for Flax params under {rule.dst})")
        consumed.add(key)
        return state[key]

    for rule in rules:
        layers = range(_num_layers(rule, targets)) if rule.stacked else [None]
        for lm in rule.layout.leaves:
            keys_of = lambda i, lm=lm: [  # noqa: E731
                _join(rule.src.format(i=i) if i is not None else rule.src, s, ".") for s in lm.src
            ]
            if lm.recomputed:
                for i in layers:
                    for key in keys_of(i):
                        value = take(key, rule)
                        _check_tensor(key, value, None, complex_ok=True)
                        if rope_check is not None and not dry_run:
                            rope_check(key, value)
                        recomputed.append(key)
                continue
            paths = _leaf_targets(rule, lm, targets)
            if paths is None:
                # The target has no such leaf (e.g. a conv without bias): the key must be absent.
                for i in layers:
                    for key in keys_of(i):
                        if key in state:
                            raise UnexpectedKeyError(
                                f"unexpected key {key}: the target module {rule.dst} has no such parameter"
                            )
                continue
            full_shapes = [tuple(targets[p].shape) for p in paths]
            layer_shapes = [s[1:] for s in full_shapes] if rule.stacked else full_shapes
            expected_src = lm.src_shapes(layer_shapes)
            per_layer: list[list[np.ndarray]] = []
            for i in layers:
                srcs = []
                for key, exp in zip(keys_of(i), expected_src):
                    value = take(key, rule)
                    _check_tensor(key, value, exp)
                    srcs.append(value)
                if not dry_run:
                    arrays = [np.asarray(a, dtype=np.float32) for a in srcs]
                    outs = lm.forward(arrays, layer_shapes)
                    for key, o, s in zip(keys_of(i), outs, layer_shapes):
                        if tuple(o.shape) != tuple(s):  # a layout bug, not a user error
                            raise ShapeMismatchError(f"key {key}: transform produced {o.shape}, expected {s}")
                    per_layer.append(outs)
            for j, (path, shape) in enumerate(zip(paths, full_shapes)):
                if path in filled:
                    raise ConversionError(f"Flax param {path} is filled by two rules")
                if dry_run:
                    filled[path] = jax.ShapeDtypeStruct(shape, param_dtype)
                else:
                    arr = np.stack([o[j] for o in per_layer]) if rule.stacked else per_layer[0][j]
                    filled[path] = jnp.asarray(arr, dtype=param_dtype)

    unfilled = sorted(set(targets) - set(filled))
    if unfilled:
        raise UnfilledParamError(f"Flax param {unfilled[0]} is not filled by any rule ({len(unfilled)} unfilled)")
    pending: dict[str, list[str]] = defaultdict(list)
    unexpected = []
    for key in sorted(set(state) - consumed):
        part = next((d for p, d in pending_parts.items() if key.startswith(p)), None)
        if part is None:
            unexpected.append(key)
        else:
            pending[part].append(key)
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise UnexpectedKeyError(f"unexpected key {unexpected[0]}{more}: no rule consumes it")
    stored = sorted(consumed - set(recomputed))
    report = ConversionReport(
        consumed=stored,
        recomputed=recomputed,
        pending=dict(pending),
        num_params=sum(int(np.prod(v.shape)) for v in filled.values()),
        num_source_elements=sum(int(np.prod(_shape(state[k]))) for k in stored),
    )
    return _unflatten(filled), report


def make_rope_check(cfg, tol: float = 1e-4):
    """Checks each stored ViT `freqs_cis` table against the table our config implies."""
    from sam3_jax.layers.rope import axial_rope_angles, complex_table

    v = cfg.vit
    head_dim = v.width // v.heads
    grid = cfg.image_size // v.patch_size
    window = complex_table(np.asarray(axial_rope_angles(head_dim, v.window_size, v.window_size)))
    glob = complex_table(
        np.asarray(axial_rope_angles(head_dim, grid, grid, scale=v.window_size / grid))
    )
    pat = re.compile(r"\.blocks\.(\d+)\.attn\.freqs_cis$")

    def check(key: str, value: Any) -> None:
        m = pat.search(key)
        if m is None:
            raise UnexpectedKeyError(f"unexpected recomputed key {key}")
        expected = glob if int(m.group(1)) in tuple(v.global_blocks) else window
        value = np.asarray(value)
        if value.shape != expected.shape:
            raise ShapeMismatchError(
                f"key {key}: RoPE table shape {value.shape} does not match the config's {expected.shape} "
                "(check image_size, window_size and global_blocks)"
            )
        err = float(np.max(np.abs(value - expected)))
        if err > tol:
            raise ConversionError(f"key {key}: RoPE table differs from the config's by {err:.3g}")

    return check


def backbone_target_shapes(cfg) -> dict[str, Any]:
    """Abstract Flax params of the vision-language backbone under the model root ('backbone')."""
    import flax.linen as nn

    from sam3_jax.model.backbone import VLBackbone

    model = VLBackbone(cfg)
    s = cfg.image_size
    shapes = jax.eval_shape(
        model.init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32),
        jax.ShapeDtypeStruct((1, cfg.text.context_length), jnp.int32),
    )
    return {"backbone": nn.meta.unbox(shapes)["params"]}


def convert_backbone(
    state: Mapping[str, Any], cfg, *, dry_run: bool = False, param_dtype: Any = None
) -> tuple[dict[str, Any], ConversionReport]:
    """Official state dict -> {'backbone': params} for the parts built so far."""
    dtype = jnp.dtype(param_dtype or cfg.param_dtype)
    return convert(
        state,
        backbone_target_shapes(cfg),
        backbone_rules(cfg),
        param_dtype=dtype,
        dry_run=dry_run,
        rope_check=make_rope_check(cfg),
        pending_parts=PENDING_FOR_BACKBONE,
    )


# Where a checkpoint keeps the tracker (image-model layout): `tracker.` in sam3.pt (video model),
# `inst_interactive_predictor.model.` in an image model built with instance interactivity.
TRACKER_SOURCES = ("tracker", "inst_interactive_predictor.model")


def tracker_source(state: Mapping[str, Any]) -> str | None:
    """The prefix under which `state` (image-model layout) holds the tracker, or None."""
    found = [p for p in TRACKER_SOURCES if any(k.startswith(p + ".") for k in state)]
    if len(found) > 1:
        raise ConversionError(f"the checkpoint holds two trackers ({', '.join(p + '.*' for p in found)}); "
                              "convert one model at a time")
    return found[0] if found else None


def convert_image_model(
    state: Mapping[str, Any], cfg, *, dry_run: bool = False, param_dtype: Any = None, rules=None,
    tracker: bool | None = None, progress=None,
) -> tuple[dict[str, Any], ConversionReport]:
    """Official state dict (`sam3.pt` or image-model layout) -> params of the image detector and,
    when the checkpoint holds one (`tracker=None`: auto; True: required; False: reported as not
    converted), of the tracker under the top-level key `tracker`. `rules` replaces the detector's
    rule table; `progress` wraps the rule list (e.g. tqdm)."""
    from sam3_jax.convert.rules_tracker import tracker_rules
    from sam3_jax.model.sam3_image import image_model_target_shapes
    from sam3_jax.model.tracker.tracker import tracker_target_shapes

    dtype = jnp.dtype(param_dtype or cfg.param_dtype)
    state = normalize_keys(state)
    src = tracker_source(state)
    if tracker is None:
        tracker = src is not None
    if tracker and src is None:
        raise MissingKeyError("missing key tracker.*: the checkpoint holds no tracker "
                              "(neither tracker.* nor inst_interactive_predictor.model.* keys)")
    targets = image_model_target_shapes(cfg)
    all_rules = list(image_model_rules(cfg) if rules is None else rules)
    if tracker:
        targets = {**targets, "tracker": tracker_target_shapes(cfg)}
        all_rules += tracker_rules(cfg, src, "tracker")
    return convert(
        state,
        targets,
        progress(all_rules) if progress is not None else all_rules,
        param_dtype=dtype,
        dry_run=dry_run,
        rope_check=make_rope_check(cfg),
        pending_parts={} if tracker else PENDING_FOR_IMAGE_MODEL,
    )
