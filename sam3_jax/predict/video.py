"""`Sam3VideoPredictor`: concept segmentation and tracking in a video, one compiled step per frame.

    predictor = Sam3VideoPredictor.from_checkpoint("converted/")
    predictor.start_session(frames)                 # list of HxWx3 uint8 arrays, or a folder of images
    first = predictor.add_prompt(0, text="person")  # detections on frame 0 become objects
    for frame_idx, out in predictor.propagate():    # out: obj_ids, scores, boxes_xywh, masks
        ...

The per-frame work is `sam3_jax.model.video.step.video_step` over a fixed-capacity `VideoState`
(objects and memory frames bounded by `VideoConfig`), jitted once per (video size, direction).
Outputs follow the official `Sam3VideoInference` semantics: `add_prompt` restarts the session's
tracking from that frame (a new prompt replaces the previous one, as there) and returns that
frame's objects; `propagate` yields every frame from the start frame on, held back by
`hotstart_delay` frames so that objects the hot-start rules remove are hidden on the frames
already computed too (the last frames come out together at the end).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sam3_jax.formats.image import resize_uint8, to_uint8_rgb
from sam3_jax.model.tokenizer import ClipTokenizer
from sam3_jax.model.video.step import VideoConfig, VideoState, postprocess, video_step

_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class _Frames:
    """The session's frames: a list of arrays, or image files of a folder read when needed."""

    def __init__(self, frames: Any):
        if isinstance(frames, (str, os.PathLike)):
            path = os.fspath(frames)
            if not os.path.isdir(path):
                raise FileNotFoundError(f"no such folder of frames: {path}")
            self.files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(_IMAGE_EXTS))
            if not self.files:
                raise ValueError(f"{path} holds no image files ({', '.join(_IMAGE_EXTS)})")
            self.arrays = None
            first = self._read(0)
        else:
            self.files = None
            self.arrays = list(frames)
            if not self.arrays:
                raise ValueError("the video has no frames")
            first = self._read(0)
        self.hw = first.shape[:2]
        self.n = len(self.files) if self.files is not None else len(self.arrays)
        if self.arrays is not None:
            for i in range(self.n):
                self._read(i)  # checks every frame's type and size now

    def _read(self, i: int) -> np.ndarray:
        if self.files is not None:
            from PIL import Image

            with Image.open(self.files[i]) as im:
                img = np.asarray(im.convert("RGB"))
        else:
            img = self.arrays[i]
            if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(f"frame {i} must be an HxWx3 uint8 array, got "
                                 f"{getattr(img, 'dtype', type(img).__name__)} {getattr(img, 'shape', '')}")
        if hasattr(self, "hw") and img.shape[:2] != tuple(self.hw):
            raise ValueError(f"frame {i} is {img.shape[1]}x{img.shape[0]}, but frame 0 is "
                             f"{self.hw[1]}x{self.hw[0]}: all frames of a video must have one size")
        return to_uint8_rgb(img)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        return self._read(i)


def preprocess_frame(frame: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 (H, W, 3) -> (1, R, R, 3) float32 as the official video loader normalises a frame
    ((x / 255 rounded to float32 - 0.5) / 0.5); frames of another size are first resized as the
    image predictor resizes (the official loader uses PIL's resize; identical at R x R)."""
    if frame.shape[:2] != (resolution, resolution):
        frame = resize_uint8(frame, (resolution, resolution))
    x = (frame / 255.0).astype(np.float32)
    return ((x - np.float32(0.5)) / np.float32(0.5))[None]


@functools.lru_cache(maxsize=8)
def _compiled(cfg_json: str, vcfg: VideoConfig):
    """The jitted text encoder and per-frame step of one (model config, video config): shared by
    every predictor with those configs, so a new session or predictor does not compile again."""
    import ml_collections

    from sam3_jax.model.sam3_image import Sam3Image

    cfg = ml_collections.ConfigDict(json.loads(cfg_json))
    model = Sam3Image(cfg)

    @jax.jit
    def encode_text(params, tokens):
        det_params = {k: v for k, v in params.items() if k != "tracker"}
        return model.apply({"params": det_params}, tokens, method=Sam3Image.forward_text)

    @functools.partial(jax.jit, static_argnames=("reverse", "video_hw"), donate_argnames=("state",))
    def step(params, state, image, text_out, frame_idx, num_frames, allow_new, *, reverse, video_hw):
        return video_step(params, cfg, vcfg, state, image, text_out, frame_idx, num_frames, allow_new,
                          reverse=reverse, video_hw=video_hw)

    return encode_text, step


class Sam3VideoPredictor:
    """mesh / rules: with a device mesh, the video state's object axis (logical name "objects")
    is split over the mesh axes the rules give it (default `sam3_jax.config.LOGICAL_AXIS_RULES`:
    data x fsdp); the compiled step then runs each device's objects there. Params are used as
    given (replicated unless placed otherwise)."""

    def __init__(self, params: Any, model_config, video_config: Optional[VideoConfig] = None, *,
                 tokenizer: Optional[ClipTokenizer] = None, mesh: Optional[jax.sharding.Mesh] = None,
                 rules: Optional[Any] = None):
        if "tracker" not in params:
            raise ValueError("video needs the tracker's params: convert the official checkpoint with its tracker")
        if not model_config.neck.add_sam2_neck:
            raise ValueError("video needs the tracker neck: the model config has neck.add_sam2_neck=False")
        self.config = model_config
        self.video_config = video_config or VideoConfig()
        self.params = params
        self.tokenizer = tokenizer or ClipTokenizer()
        self.resolution = int(model_config.image_size)
        self._encode_text, self._step = _compiled(model_config.to_json(), self.video_config)
        self.mesh = mesh
        if rules is None:
            from sam3_jax.config import LOGICAL_AXIS_RULES

            rules = LOGICAL_AXIS_RULES
        self.rules = tuple(rules)
        self._frames: Optional[_Frames] = None
        self._text_out = None
        self._state: Optional[VideoState] = None
        self._shardings = None  # the state's placement over `mesh`, fixed per session
        self._removed: set[int] = set()
        self.return_low_res = False  # also return each object's low-res mask logits ("low_res")

    @classmethod
    def from_checkpoint(cls, ckpt_dir: str, video_config: Optional[VideoConfig] = None) -> "Sam3VideoPredictor":
        """Loads a directory written by `convert_weights.py` from the official checkpoint (with its
        tracker)."""
        from sam3_jax.predict.predictor import Sam3ImagePredictor

        image = Sam3ImagePredictor.from_checkpoint(ckpt_dir)
        if "tracker" not in image.params:
            raise ValueError(f"{ckpt_dir} holds no tracker: convert the official checkpoint (sam3.pt) again")
        return cls(image.params, image.config, video_config, tokenizer=image.tokenizer)

    # ------------------------------------------------------------------ session
    def start_session(self, frames: Any) -> None:
        """frames: a list of HxWx3 uint8 arrays (one size), or a folder of image files (read lazily,
        in name order)."""
        self._frames = _Frames(frames)
        self.reset()

    @property
    def num_frames(self) -> int:
        self._require_session("num_frames")
        return len(self._frames)

    def reset(self) -> None:
        """Forgets the prompt and every object (the frames stay)."""
        self._text_out = None
        # distinct buffers per leaf: the step donates the state
        state = jax.tree.map(lambda x: jnp.array(x, copy=True), VideoState.empty(self.config, self.video_config))
        self._shardings = None if self.mesh is None else self.state_shardings(state)
        self._state = state if self.mesh is None else jax.device_put(state, self._shardings)
        self._removed = set()

    def state_shardings(self, state: VideoState) -> Any:
        """NamedShardings of the state over `self.mesh`: the object axis (every leaf's first axis of
        size max_objects) on the mesh axes of the logical name "objects"; the rest replicated."""
        from jax.sharding import NamedSharding

        from sam3_jax.parallel.mesh import spec_for

        n = self.video_config.max_objects

        def one(x):
            names = ("objects",) + (None,) * (x.ndim - 1) if x.ndim and x.shape[0] == n else (None,) * x.ndim
            return NamedSharding(self.mesh, spec_for(names, x.shape, self.mesh, self.rules))

        return jax.tree.map(one, state)

    def _require_session(self, method: str) -> None:
        if self._frames is None:
            raise RuntimeError(f"call start_session(frames) before {method}()")

    def _check_frame(self, frame_idx: Any) -> int:
        if not isinstance(frame_idx, (int, np.integer)) or isinstance(frame_idx, bool):
            raise TypeError(f"frame_idx must be an int, got {type(frame_idx).__name__}")
        if not 0 <= frame_idx < len(self._frames):
            raise IndexError(f"frame_idx {frame_idx} is out of range for a video of {len(self._frames)} frames")
        return int(frame_idx)

    def _run(self, frame_idx: int, reverse: bool, allow_new: bool = True) -> dict:
        image = jnp.asarray(preprocess_frame(self._frames[frame_idx], self.resolution))
        self._state, out = self._step(self.params, self._state, image, self._text_out, jnp.int32(frame_idx),
                                      jnp.int32(len(self._frames)), jnp.asarray(allow_new), reverse=reverse,
                                      video_hw=tuple(int(v) for v in self._frames.hw))
        if self._shardings is not None:  # keep the placement (one compiled step)
            self._state = jax.device_put(self._state, self._shardings)
        out = jax.device_get(out)
        self._removed.update(int(i) for i in np.asarray(out["obj_id"])[np.asarray(out["removed"])])
        return out

    # ------------------------------------------------------------------ prompts
    def add_prompt(self, frame_idx: int, text: str) -> dict:
        """A concept prompt on a frame: restarts tracking (a new prompt replaces the previous one,
        as in the official model), detects on that frame and returns its objects."""
        self._require_session("add_prompt")
        frame_idx = self._check_frame(frame_idx)
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text must be a non-empty string, got {text!r}")
        self.reset()
        tokens = self.tokenizer([text], context_length=int(self.config.text.context_length))
        self._text_out = self._encode_text(self.params, jnp.asarray(tokens))
        self._prompt_frame = frame_idx
        out = self._run(frame_idx, reverse=False)
        return postprocess(out, self._removed, low_res=self.return_low_res)

    def remove_object(self, obj_id: int) -> None:
        """Stops tracking an object (its slot is freed; its id is not reused)."""
        self._require_session("remove_object")
        ids = np.asarray(self._state.obj_id)
        alive = np.asarray(self._state.alive)
        hit = np.flatnonzero(alive & (ids == obj_id))
        if len(hit) == 0:
            raise KeyError(f"unknown obj_id {obj_id}; live objects: {sorted(ids[alive].tolist())}")
        self._state = self._state.replace(alive=self._state.alive.at[int(hit[0])].set(False),
                                          obj_id=self._state.obj_id.at[int(hit[0])].set(-1))
        self._removed.add(int(obj_id))

    # ------------------------------------------------------------------ propagation
    def propagate(self, direction: str = "forward", start_frame: Optional[int] = None,
                  max_frames: Optional[int] = None) -> Iterator[tuple[int, dict]]:
        """Yields (frame_idx, {"obj_ids", "scores", "boxes_xywh" (normalised), "masks" (N, H, W)
        bool}) for each frame from start_frame (default: the prompted frame) in `direction`
        ("forward", "backward" or "both": forward, then backward from start_frame - 1)."""
        self._require_session("propagate")
        if self._text_out is None:
            raise RuntimeError("call add_prompt(frame_idx, text=...) before propagate()")
        if direction not in ("forward", "backward", "both"):
            raise ValueError(f"direction must be 'forward', 'backward' or 'both', got {direction!r}")
        start = self._prompt_frame if start_frame is None else self._check_frame(start_frame)
        if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 0):
            raise ValueError(f"max_frames must be a non-negative int or None, got {max_frames!r}")
        if direction in ("forward", "both"):
            yield from self._propagate(start, max_frames, reverse=False)
        if direction in ("backward", "both"):
            yield from self._propagate(start, max_frames, reverse=True)

    def _propagate(self, start: int, max_frames: Optional[int], reverse: bool) -> Iterator[tuple[int, dict]]:
        n = len(self._frames)
        count = n if max_frames is None else max_frames
        if reverse:
            end = max(start - count, 0)
            order = range(start - 1, end - 1, -1)
        else:
            end = min(start + count, n - 1)
            order = range(start, end + 1)
        delay = self.video_config.merge.hotstart_delay
        buffer: list[tuple[int, dict]] = []
        for frame_idx in order:
            buffer.append((frame_idx, self._run(frame_idx, reverse)))
            if delay <= 0:
                ready, buffer = buffer, []
            elif frame_idx == end:
                ready, buffer = buffer, []
            elif len(buffer) >= delay:
                ready, buffer = buffer[:1], buffer[1:]
            else:
                ready = []
            for f, out in ready:
                hidden = set(self._removed) | {int(i) for i in np.asarray(out["obj_id"])[np.asarray(out["suppressed"])]}
                yield f, postprocess(out, hidden, low_res=self.return_low_res)

    @property
    def counts(self) -> dict[str, int]:
        """Outcomes the fixed capacities forced so far: births dropped for lack of an object slot,
        memory writes dropped for lack of a memory slot."""
        return {"births_dropped": int(self._state.num_dropped), "memory_dropped": int(self._state.memory_dropped)}
