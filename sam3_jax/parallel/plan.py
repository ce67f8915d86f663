"""Memory planner: per-device bytes of params, gradients, optimizer state and activations for a
config, a mesh and a global batch, without allocating any weights (everything is `jax.eval_shape`
plus the shard shapes the logical-axis rules give). The mesh may be far larger than this machine:
only its shape is used.

Params / gradients / optimizer state are exact (the same shard shapes the sharded state gets;
dimensions that the rules would split unevenly are replicated, as in `parallel.mesh`). Activations
are an analytical estimate of what a train step keeps for the backward pass, dominated by the ViT
(see `activation_bytes`); treat it as a guide, and measure on the target hardware.

`video_plan` does the same for a video session (`Sam3VideoPredictor`): replicated params (image
model and tracker), the `VideoState` with its object axis split over the mesh axes of the logical
name "objects" (exact, the predictor's own rule), the step's inputs and outputs, and the per-frame
step's temporaries: by default XLA's own figure (`memory_analysis` of the step compiled for one
device's objects), or a fast analytical estimate (`video_activation_bytes`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sam3_jax.parallel.mesh import MESH_AXES, Rules


@dataclasses.dataclass
class Plan:
    mesh: dict[str, int]
    global_batch: int
    per_device_batch: float
    params: int
    grads: int
    opt_state: int
    activations: int
    num_params: int

    @property
    def total(self) -> int:
        return self.params + self.grads + self.opt_state + self.activations

    def table(self) -> str:
        gib = lambda b: f"{b / 2**30:9.2f} GiB"  # noqa: E731
        mesh = ", ".join(f"{k}={v}" for k, v in self.mesh.items())
        return "\n".join([
            f"mesh ({mesh}) = {math.prod(self.mesh.values())} devices; global batch {self.global_batch} "
            f"({self.per_device_batch:g} per device); {self.num_params:,} parameters",
            f"  params        {gib(self.params)}",
            f"  gradients     {gib(self.grads)}",
            f"  optimizer     {gib(self.opt_state)}  (AdamW: two fp32 moments + count)",
            f"  activations   {gib(self.activations)}  (estimate)",
            f"  total         {gib(self.total)}  per device",
        ])


def _axis_size(mesh: dict[str, int], axes: Any) -> int:
    if axes is None:
        return 1
    if isinstance(axes, str):
        return mesh[axes]
    return math.prod(mesh[a] for a in axes)


def shard_shape(names, shape, mesh: dict[str, int], rules: Rules) -> tuple[int, ...]:
    spec = tuple(nn.logical_to_mesh_axes(tuple(names), rules)) + (None,) * len(shape)
    out = []
    for dim, axes in zip(shape, spec):
        size = _axis_size(mesh, axes)
        out.append(dim // size if dim % size == 0 else dim)
    return tuple(out)


def sharded_bytes(boxed_abstract: Any, mesh: dict[str, int], rules: Rules, dtype=None) -> int:
    """Per-device bytes of a boxed abstract param-shaped tree (unboxed leaves are replicated)."""
    total = 0
    is_boxed = lambda x: isinstance(x, nn.LogicallyPartitioned)  # noqa: E731
    for leaf in jax.tree_util.tree_leaves(boxed_abstract, is_leaf=is_boxed):
        value = leaf.value if is_boxed(leaf) else leaf
        names = leaf.names if is_boxed(leaf) else (None,) * len(value.shape)
        itemsize = np.dtype(dtype or value.dtype).itemsize
        total += int(np.prod(shard_shape(names, value.shape, mesh, rules))) * itemsize
    return total


def activation_bytes(model_cfg, per_device_batch: float, remat: str, act_itemsize: int, tensor: int = 1) -> int:
    """Bytes a train step keeps for backward, per device (estimate).

    ViT, per block and token (width C, MLP hidden M, heads H): without remat about 8 C + 3 M values
    (residual stream, two LayerNorm outputs, q/k/v, attention output, projection, MLP pre- and
    post-activation) plus the softmax probabilities, H x window^2 per token in windowed blocks and
    H x grid^2 in global blocks; with remat "full" only the block input (C) per block, plus one
    block's worth recomputed. Tensor parallelism splits the head- and MLP-sized parts (q/k/v,
    probabilities, MLP activations) by the `tensor` size. The text encoder, necks and detector heads
    are estimated the same way and are small next to the trunk at 1008 px.
    """
    v = model_cfg.vit
    grid = model_cfg.image_size // v.patch_size
    tokens = grid * grid
    c, m, h = v.width, int(v.width * v.mlp_ratio), v.heads
    n_global = len(v.global_blocks)
    n_window = v.depth - n_global
    per_block = tokens * (5 * c + (3 * c + 3 * m) / tensor)
    probs = (n_window * tokens * h * v.window_size**2 + n_global * tokens * h * tokens) / tensor
    if remat == "full":
        vit = v.depth * tokens * c + per_block + tokens * h * tokens / tensor
    else:
        vit = v.depth * per_block + probs
    t = model_cfg.text
    text = t.layers * t.context_length * (8 * t.width + 3 * 4 * t.width)
    d = model_cfg.d_model
    neck = 2 * sum(int((grid * s) ** 2) for s in model_cfg.neck.scale_factors) * d * 3
    heads = (model_cfg.encoder_layers * tokens * (8 * d + 3 * model_cfg.dim_feedforward)
             + model_cfg.num_queries * (4 * grid) ** 2 * 2)  # decoder is small; masks at 4 x grid
    return int((vit + text + neck + heads) * per_device_batch * act_itemsize)


def plan(cfg, mesh: dict[str, int], global_batch: int) -> Plan:
    from sam3_jax.model.sam3_image import Sam3Image

    rules = tuple((n, tuple(a) if isinstance(a, (list, tuple)) else a) for n, a in cfg.logical_axis_rules)
    mesh = {a: int(mesh[a]) for a in MESH_AXES}
    model_cfg = cfg.model
    s, t = model_cfg.image_size, model_cfg.text.context_length
    with nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(
            Sam3Image(model_cfg).init, jax.random.key(0),
            jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32), jax.ShapeDtypeStruct((1, t), jnp.int32),
            jax.ShapeDtypeStruct((1, 1, 4), jnp.float32), jax.ShapeDtypeStruct((1, 1), jnp.int32),
            jax.ShapeDtypeStruct((1, 1), jnp.bool_),
        )["params"]
    params = sharded_bytes(boxed, mesh, rules)
    grads = params
    opt_state = 2 * sharded_bytes(boxed, mesh, rules, dtype=jnp.float32) + 4  # mu, nu, count
    batch_shards = mesh["data"] * mesh["fsdp"]
    per_device = global_batch / batch_shards
    act = activation_bytes(model_cfg, per_device, model_cfg.remat, np.dtype(model_cfg.dtype).itemsize,
                           tensor=mesh["tensor"])
    n = sum(int(np.prod(x.value.shape)) for x in jax.tree_util.tree_leaves(
        boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)))
    return Plan(mesh, global_batch, per_device, params, grads, opt_state, act, n)


def parse_mesh(spec: str) -> dict[str, int]:
    """'data=8,fsdp=32,tensor=1' -> dict; missing axes default to 1."""
    out = {a: 1 for a in MESH_AXES}
    for part in filter(None, spec.split(",")):
        if "=" not in part:
            raise ValueError(f"--mesh expects axis=size pairs like data=8,fsdp=32,tensor=1; got {part!r}")
        k, v = part.split("=", 1)
        if k.strip() not in out:
            raise ValueError(f"unknown mesh axis {k!r}; expected {MESH_AXES}")
        out[k.strip()] = int(v)
        if out[k.strip()] < 1:
            raise ValueError(f"mesh axis {k} must be >= 1")
    return out


# --------------------------------------------------------------------------------------------- video sessions

ACTIVATION_METHODS = ("compile", "analytic")


def _size(b: float) -> str:
    """Bytes as GiB from 1 GiB up, else MiB (both with a fixed width, so tables line up)."""
    return f"{b / 2**30:9.2f} GiB" if b >= 2**30 else f"{b / 2**20:9.2f} MiB"


@dataclasses.dataclass
class VideoPlan:
    """Per-device bytes of a video session: N objects on a mesh, one frame in flight."""

    mesh: dict[str, int]
    objects: int
    objects_per_device: int
    video_hw: tuple[int, int]
    memory_slots: int
    param_dtype: str
    num_params: int
    params: int
    state: int
    inputs: int  # the normalised frame and the cached text encoding (and three scalars)
    outputs: int  # the step's outputs on the device (masks at the video's size, low-res logits, ...)
    activations: int
    activation_method: str  # how `activations` was obtained, in words
    host_output: int  # what one frame's outputs take on the host (every object)
    notes: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return self.params + self.state + self.inputs + self.outputs + self.activations

    def table(self) -> str:
        mesh = ", ".join(f"{k}={v}" for k, v in self.mesh.items())
        n, k = self.objects, self.objects_per_device
        h, w = self.video_hw
        return "\n".join([
            f"video session: mesh ({mesh}) = {math.prod(self.mesh.values())} devices; {n} objects "
            f"({k} per device), {self.memory_slots} memory slots per object, video {h}x{w} (HxW); "
            f"{self.num_params:,} parameters",
            f"  params        {_size(self.params)}  (image model + tracker, {self.param_dtype}, replicated)",
            f"  video state   {_size(self.state)}  ({k} object slots x {self.memory_slots} memory frames)",
            f"  frame, prompt {_size(self.inputs)}  (normalised frame, cached text encoding)",
            f"  step outputs  {_size(self.outputs)}  ({k} masks {h}x{w} bool, low-res logits, scores)",
            f"  activations   {_size(self.activations)}  ({self.activation_method})",
            f"  total         {_size(self.total)}  per device",
            f"  host output   {_size(self.host_output)}  per frame ({n} masks {h}x{w} bool, low-res logits, "
            "scores; `propagate` holds hotstart_delay frames of them)",
            *(f"  note: {x}" for x in self.notes),
        ])


def _tree_bytes(tree: Any) -> int:
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree))


def object_axis_names(shape: tuple[int, ...], objects: int) -> tuple[Any, ...]:
    """Logical names of a video-state or step-output leaf, as `Sam3VideoPredictor.state_shardings`
    names them: a leading axis of size `objects` is "objects", every other axis is unnamed."""
    if len(shape) and shape[0] == objects:
        return ("objects",) + (None,) * (len(shape) - 1)
    return (None,) * len(shape)


def object_sharded_bytes(tree: Any, objects: int, mesh: dict[str, int], rules: Rules) -> int:
    """Per-device bytes of a tree of ShapeDtypeStructs whose object axis is split over the mesh
    axes of "objects" (replicated where the object count does not divide, as `spec_for` does)."""
    total = 0
    for x in jax.tree_util.tree_leaves(tree):
        shard = shard_shape(object_axis_names(x.shape, objects), x.shape, mesh, rules)
        total += int(np.prod(shard)) * np.dtype(x.dtype).itemsize
    return total


def objects_per_device(objects: int, mesh: dict[str, int], rules: Rules) -> tuple[int, str]:
    """(object slots each device holds, a note when the rules' split does not apply): the object
    axis splits over the mesh axes of "objects" when the count divides, else it is replicated (as
    `spec_for` does for the predictor; nothing is padded)."""
    per_device = shard_shape(("objects",), (objects,), mesh, rules)[0]
    wanted = _axis_size(mesh, nn.logical_to_mesh_axes(("objects",), rules)[0])
    if wanted > 1 and per_device == objects:
        return per_device, (f"{objects} objects do not divide over the {wanted} devices the rules give \"objects\": "
                            "the predictor replicates the object axis (every device holds every object); use a "
                            f"multiple of {wanted}")
    return per_device, ""


def video_param_shapes(model_cfg, dtype: Any = jnp.float32) -> dict[str, Any]:
    """Abstract params of a video session, as `Sam3VideoPredictor` holds them: the image model and
    the tracker under "tracker" (no allocation)."""
    from sam3_jax.model.sam3_image import image_model_target_shapes
    from sam3_jax.model.tracker.tracker import tracker_target_shapes

    params = image_model_target_shapes(model_cfg, dtype=dtype)
    params["tracker"] = tracker_target_shapes(model_cfg, dtype=dtype)
    return params


def video_step_specs(model_cfg, vcfg, param_dtype: Any = jnp.float32) -> tuple[Any, ...]:
    """Abstract arguments of `video_step` (params, state, image, text_out, frame_idx, num_frames,
    allow_new): what the predictor's jitted step is called with."""
    from sam3_jax.model.sam3_image import Sam3Image
    from sam3_jax.model.video.step import VideoState

    params = video_param_shapes(model_cfg, param_dtype)
    det = {k: v for k, v in params.items() if k != "tracker"}
    tokens = jax.ShapeDtypeStruct((1, model_cfg.text.context_length), jnp.int32)
    text_out = jax.eval_shape(
        lambda p, t: Sam3Image(model_cfg).apply({"params": p}, t, method=Sam3Image.forward_text), det, tokens)
    state = jax.eval_shape(lambda: VideoState.empty(model_cfg, vcfg))
    s = model_cfg.image_size
    image = jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32)
    scalar = jax.ShapeDtypeStruct((), jnp.int32)
    return params, state, image, text_out, scalar, scalar, jax.ShapeDtypeStruct((), jnp.bool_)


def _video_step_fn(model_cfg, vcfg, video_hw: tuple[int, int]):
    from sam3_jax.model.video.step import video_step

    def step(params, state, image, text_out, frame_idx, num_frames, allow_new):
        return video_step(params, model_cfg, vcfg, state, image, text_out, frame_idx, num_frames, allow_new,
                          reverse=False, video_hw=video_hw)

    return step


def planning_attention(model_cfg) -> tuple[str, str]:
    """(implementation to compile with, a note) for the config's `attention_impl`. None (automatic)
    becomes "xla", jax.nn's reference kernel that materialises the logits: what the automatic
    choice runs on a TPU and on a GPU in fp32 (on this planning machine's CPU it would pick
    "blocked", which says nothing about an accelerator). "cudnn" does not compile off a GPU:
    "blocked", whose logits are one query block at a time, stands in for a fused kernel."""
    impl = model_cfg.get("attention_impl", None)
    if impl in (None, "xla"):
        return "xla", "attention xla: materialised logits"
    if impl == "cudnn":
        return "blocked", "attention cudnn, planned as blocked (a fused kernel's memory)"
    return impl, f"attention {impl}"


def compiled_step_temp_bytes(model_cfg, vcfg, video_hw: tuple[int, int], param_dtype: Any = jnp.float32) -> int:
    """XLA's temporaries of the per-frame step for `vcfg.max_objects` objects on one device of the
    default backend (`compiled.memory_analysis().temp_size_in_bytes`: everything but the arguments
    and outputs), compiled from abstract arguments; nothing is allocated. The state is donated,
    as in the predictor. Compiling the full model takes about half a minute on a small CPU."""
    import copy

    cfg = copy.deepcopy(model_cfg)
    with cfg.unlocked():
        cfg.attention_impl = planning_attention(model_cfg)[0]
    specs = video_step_specs(cfg, vcfg, param_dtype)
    compiled = jax.jit(_video_step_fn(cfg, vcfg, video_hw), donate_argnums=(1,)).lower(*specs).compile()
    stats = compiled.memory_analysis()
    if stats is None:
        raise NotImplementedError(f"the {jax.default_backend()} backend gives no memory analysis")
    return int(stats.temp_size_in_bytes)


def video_activation_bytes(model_cfg, objects: int, memory_slots: int, video_hw: tuple[int, int]) -> int:
    """Temporaries of one video step on a device holding `objects` object slots (analytical
    estimate, XLA's materialised attention assumed). The detector and the tracking half run one
    after the other, so the peak is the larger of:

      detector: the ViT's global-attention block, H x T^2 logits and probabilities (T = g^2 tokens),
        plus a few token x width buffers;
      tracking: the detector's outputs still live (tracker-neck maps at 4x, 2x, 1x; Q mask logits
        at 4g), and per object: the memory attention's cross-attention logits and probabilities,
        T x Tk with Tk = K g^2 spatial memory tokens + K C/mem_dim pointer tokens (the self-attention,
        T x T, runs before it and reuses the space), about three float32 / int32 maps at the video's
        size (resizing to it, the births' consolidation with its running count over objects) and
        about eight float32 maps at the memory encoder's input size 16g.

    At the full config with 20 memory slots the cross-attention is ~4 GiB per object in float32;
    against XLA:CPU's figure for the compiled step this estimate is 3-4 % low at the full config
    (1 to 8 objects, 8 or 20 slots, 480x640 and 1080x1920), within ~25 % at the tiny one, where
    XLA's placement of the small buffers counts."""
    g = model_cfg.image_size // model_cfg.vit.patch_size
    tokens, v, t = g * g, model_cfg.vit, model_cfg.tracker
    item = np.dtype(model_cfg.dtype).itemsize
    logits = item + 4  # logits in the compute dtype, softmax in float32
    detector = logits * v.heads * tokens**2 + 4 * tokens * v.width * item
    keys = memory_slots * (tokens + t.d_model // t.mem_dim)
    d = model_cfg.neck.d_model
    det_outputs = item * d * 21 * tokens + 4 * model_cfg.num_queries * 16 * tokens  # (16 + 4 + 1) g^2 x d
    per_object = logits * tokens * keys + 12 * video_hw[0] * video_hw[1] + 32 * (16 * g) ** 2
    return int(max(detector, det_outputs + objects * per_object))


def video_plan(cfg, mesh: dict[str, int], objects: int, *, video_hw: tuple[int, int] = (1080, 1920),
               memory_slots: int = 20, param_dtype: str = "float32", activations: str = "compile") -> VideoPlan:
    """Per-device memory of a video session of `objects` object slots (cfg: an experiment config,
    with `model` and `logical_axis_rules`). activations: "compile" (XLA's figure for the step
    compiled for one device's objects) or "analytic" (`video_activation_bytes`, no compile)."""
    from sam3_jax.model.video.step import VideoConfig

    if activations not in ACTIVATION_METHODS:
        raise ValueError(f"activations must be one of {ACTIVATION_METHODS}, got {activations!r}")
    rules = tuple((n, tuple(a) if isinstance(a, (list, tuple)) else a) for n, a in cfg.logical_axis_rules)
    mesh = {a: int(mesh[a]) for a in MESH_AXES}
    model_cfg = cfg.model
    video_hw = (int(video_hw[0]), int(video_hw[1]))
    vcfg = VideoConfig(max_objects=objects, memory_slots=memory_slots)
    params, state, *inputs = video_step_specs(model_cfg, vcfg, jnp.dtype(param_dtype))
    outputs = jax.eval_shape(_video_step_fn(model_cfg, vcfg, video_hw), params, state, *inputs)[1]
    per_device, note = objects_per_device(objects, mesh, rules)
    notes = [note] if note else []
    shards = objects // per_device
    if activations == "compile":
        impl_note = planning_attention(model_cfg)[1]
        act = compiled_step_temp_bytes(model_cfg, dataclasses.replace(vcfg, max_objects=per_device), video_hw,
                                       jnp.dtype(param_dtype))
        method = (f"XLA memory_analysis of the step compiled for {per_device} objects on {jax.default_backend()}, "
                  f"{impl_note}")
    else:
        act = video_activation_bytes(model_cfg, per_device, memory_slots, video_hw)
        method = "analytic estimate, materialised attention"
        if model_cfg.get("attention_impl", None) not in (None, "xla"):
            notes.append(f"the analytic estimate assumes materialised attention; the config's "
                         f"{model_cfg.attention_impl!r} needs less: use --activations compile")
    if shards > 1:
        notes.append("steps that compare objects across devices (association, non-overlap) add collectives' "
                     "buffers not counted here")
    return VideoPlan(
        mesh=mesh, objects=objects, objects_per_device=per_device, video_hw=video_hw, memory_slots=memory_slots,
        param_dtype=str(jnp.dtype(param_dtype)),
        num_params=sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params)),
        params=_tree_bytes(params), state=object_sharded_bytes(state, objects, mesh, rules),
        inputs=_tree_bytes(inputs), outputs=object_sharded_bytes(outputs, objects, mesh, rules),
        activations=act, activation_method=method, host_output=_tree_bytes(outputs), notes=tuple(notes))


def parse_video_size(spec: str) -> tuple[int, int]:
    """'1080x1920' (height x width) -> (1080, 1920)."""
    parts = spec.strip().lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--video_size expects HEIGHTxWIDTH like 1080x1920, got {spec!r}")
    h, w = (int(p) for p in parts)
    if h < 1 or w < 1:
        raise ValueError(f"--video_size must be positive, got {spec!r}")
    return h, w
