"""`python -m sam3_jax.plan --config configs/sam3.py:full --mesh data=8,fsdp=32,tensor=1 --batch 256`

Prints the per-device memory of a training run (params, gradients, AdamW state, activation
estimate) without allocating weights. See `sam3_jax.parallel.plan`.

`python -m sam3_jax.plan --video --objects 64 --mesh data=8,fsdp=1,tensor=1 [--video_size 1080x1920]
[--memory_slots 20] [--dtype bfloat16] [--activations analytic]`

Prints the per-device memory of a video session (`Sam3VideoPredictor`) instead: replicated params,
the video state with its object axis split over the mesh, the per-frame step's inputs, outputs and
temporaries (by default XLA's own figure for the step compiled for one device's objects: about
half a minute at the full config on a small CPU; `--activations analytic` is instant).
"""

from __future__ import annotations

from absl import app, flags, logging

from sam3_jax.config_cli import define_config_flag

_CONFIG = define_config_flag("configs/sam3.py:full")
_MESH = flags.DEFINE_string("mesh", "data=1,fsdp=1,tensor=1", "Mesh sizes, e.g. data=8,fsdp=32,tensor=1.")
_BATCH = flags.DEFINE_integer("batch", 1, "Global batch size (images).")
_VIDEO = flags.DEFINE_bool("video", False, "Plan a video session (Sam3VideoPredictor) instead of training.")
_OBJECTS = flags.DEFINE_integer("objects", 16, "--video: object slots of the session (VideoConfig.max_objects).")
_VIDEO_SIZE = flags.DEFINE_string("video_size", "1080x1920", "--video: frame size HEIGHTxWIDTH.")
_MEMORY_SLOTS = flags.DEFINE_integer("memory_slots", 20, "--video: memory slots per object (VideoConfig.memory_slots).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "--video: dtype of the params held.")
_ACTIVATIONS = flags.DEFINE_enum("activations", "compile", ["compile", "analytic"],
                                 "--video: the step's temporaries from XLA (compile) or an analytical estimate.")

_VIDEO_ONLY = ("objects", "video_size", "memory_slots", "dtype", "activations")


def _given(name: str) -> bool:
    return flags.FLAGS[name].present


def _video_plan(mesh: dict[str, int]) -> str:
    from sam3_jax.parallel.plan import parse_video_size, video_plan

    if _given("batch"):
        raise app.UsageError("--batch plans training; a video session takes --objects instead")
    if _OBJECTS.value < 1:
        raise app.UsageError(f"--objects must be >= 1, got {_OBJECTS.value}")
    if _MEMORY_SLOTS.value < 1:
        raise app.UsageError(f"--memory_slots must be >= 1, got {_MEMORY_SLOTS.value}")
    try:
        video_hw = parse_video_size(_VIDEO_SIZE.value)
    except ValueError as e:
        raise app.UsageError(str(e))
    if not _CONFIG.value.model.neck.add_sam2_neck:
        raise app.UsageError("video needs the tracker neck: the model config has neck.add_sam2_neck=False")
    return video_plan(_CONFIG.value, mesh, _OBJECTS.value, video_hw=video_hw, memory_slots=_MEMORY_SLOTS.value,
                      param_dtype=_DTYPE.value, activations=_ACTIVATIONS.value).table()


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    from sam3_jax.parallel.plan import parse_mesh, plan

    try:
        mesh = parse_mesh(_MESH.value)
    except ValueError as e:
        raise app.UsageError(str(e))
    if _VIDEO.value:
        print(_video_plan(mesh))
        return 0
    given = [f"--{n}" for n in _VIDEO_ONLY if _given(n)]
    if given:
        raise app.UsageError(f"these flags need --video: {', '.join(given)}")
    if _BATCH.value < 1:
        raise app.UsageError("--batch must be >= 1")
    shards = mesh["data"] * mesh["fsdp"]
    if _BATCH.value % shards:
        raise app.UsageError(f"--batch {_BATCH.value} is not divisible by data x fsdp = {shards}")
    print(plan(_CONFIG.value, mesh, _BATCH.value).table())
    return 0


if __name__ == "__main__":
    app.run(main)
