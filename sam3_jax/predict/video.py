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

    predictor.add_box(6, obj_id=0, box=[0.2, 0.2, 0.6, 0.7])      # or add_points(6, 0, points, labels)
    for frame_idx, out in predictor.propagate("both", start_frame=6):  # tracker-only for object 0's group
        ...
    predictor.add_prompt(0, text="dog", append=True)               # a second concept in the session

Clicks, and what each later `propagate` does (detect and track, tracker only for the clicked
objects, or cached outputs), follow the official interactive session
(`Sam3VideoInferenceWithInstanceInteractivity`); see `sam3_jax.model.video.interact`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import os
from typing import Any, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sam3_jax.formats.image import resize_uint8, to_uint8_rgb
from sam3_jax.layers.stack import for_inference
from sam3_jax.model.tokenizer import ClipTokenizer
from sam3_jax.model.video import interact
from sam3_jax.model.video.step import (NO_OBJ_SCORE, VideoConfig, VideoState, detect_frame, detector_params,
                                       encode_frame, gather_slots, postprocess, scatter_slots, track_slots)
from sam3_jax.predict.predictor import VISUAL_PROMPT_TEXT

_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class _Frames:
    """The session's frames: a list of arrays, image files of a folder read when needed, or a video
    file decoded when needed (`sam3_jax.formats.video`, PyAV)."""

    def __init__(self, frames: Any):
        self.video = None
        if isinstance(frames, (str, os.PathLike)) and os.path.isfile(frames):
            from sam3_jax.formats.video import VideoFileFrames

            self.files, self.arrays = None, None
            self.video = VideoFileFrames(os.fspath(frames))
            first = self.video[0]
        elif isinstance(frames, (str, os.PathLike)):
            path = os.fspath(frames)
            if not os.path.isdir(path):
                raise FileNotFoundError(f"no such folder of frames or video file: {path}")
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
        self.n = len(self.video) if self.video is not None else \
            len(self.files) if self.files is not None else len(self.arrays)
        if self.arrays is not None:
            for i in range(self.n):
                self._read(i)  # checks every frame's type and size now

    def _read(self, i: int) -> np.ndarray:
        if self.video is not None:
            img = self.video[i]
        elif self.files is not None:
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


@dataclasses.dataclass(frozen=True)
class _Compiled:
    encode_text: Any
    detect: Any
    step: Any
    encode_frame: Any
    click: Any
    commit: Any
    click_mask: Any
    partial: Any


@functools.lru_cache(maxsize=8)
def _compiled(cfg_json: str, vcfg: VideoConfig):
    """The jitted text encoder and per-frame step of one (model config, video config): shared by
    every predictor with those configs, so a new session or predictor does not compile again.
    Each runs inside `stack.for_inference` (no gradients: bf16 stacks and attention inputs are
    sliced as bits, see layers/stack.py) on the predictor's `_run_params`."""
    import ml_collections

    from sam3_jax.model.sam3_image import Sam3Image

    cfg = ml_collections.ConfigDict(json.loads(cfg_json))
    model = Sam3Image(cfg)

    @jax.jit
    @for_inference
    def encode_text(params, tokens):
        return model.apply({"params": detector_params(params)}, tokens, method=Sam3Image.forward_text)

    @jax.jit
    @for_inference
    def detect(params, feats, text_out, allow_new, geo):
        return detect_frame(params, cfg, feats, text_out, vcfg.merge, allow_new, geo)[0]

    @functools.partial(jax.jit, static_argnames=("reverse", "video_hw"), donate_argnames=("state",))
    @for_inference
    def step(params, state, det, sam2_out, frame_idx, num_frames, slots, *, reverse, video_hw):
        return track_slots(params, cfg, vcfg, state, det, sam2_out, frame_idx, num_frames, slots, reverse=reverse,
                           video_hw=video_hw)

    @jax.jit
    @for_inference
    def encode(params, image):
        return encode_frame(params, cfg, image)

    @functools.partial(jax.jit, static_argnames=("multimask_output",))
    @for_inference
    def click(params, sam2_out, points, labels, prev_low, *, multimask_output):
        return interact.click_output(params, cfg, sam2_out, points, labels, prev_low,
                                     multimask_output=multimask_output)

    @functools.partial(jax.jit, donate_argnames=("state",))
    @for_inference
    def commit(params, state, sam2_out, frame_idx, slot, click_out, stored_low, stored_score, has_stored):
        return interact.commit_click(params, cfg, state, sam2_out, frame_idx, slot, click_out, stored_low,
                                     stored_score, has_stored)

    @functools.partial(jax.jit, static_argnames=("video_hw",))
    def click_mask(low, *, video_hw):
        return interact.click_video_mask(low, video_hw, vcfg.fill_hole_area)

    @functools.partial(jax.jit, static_argnames=("reverse", "video_hw"), donate_argnames=("state",))
    @for_inference
    def partial(params, state, sam2_out, frame_idx, num_frames, active, stored_low, stored_score, slots, *, reverse,
                video_hw):
        if slots is None:
            return interact.track_partial(params, cfg, vcfg, state, sam2_out, frame_idx, num_frames, active,
                                          stored_low, stored_score, reverse=reverse, video_hw=video_hw)
        # the clicked groups' slots only (they neither read nor change the others)
        sub, out = interact.track_partial(params, cfg, vcfg, gather_slots(state, slots), sam2_out, frame_idx,
                                          num_frames, active[slots], stored_low[slots], stored_score[slots],
                                          reverse=reverse, video_hw=video_hw)
        return scatter_slots(state, slots, sub, jnp.zeros(slots.shape, bool)), out

    return _Compiled(encode_text, detect, step, encode, click, commit, click_mask, partial)


class Sam3VideoPredictor:
    """mesh / rules: with a device mesh, the video state's object axis (logical name "objects")
    is split over the mesh axes the rules give it (default `sam3_jax.config.LOGICAL_AXIS_RULES`:
    data x fsdp); the compiled step then runs each device's objects there. Params are used as
    given (replicated unless placed otherwise)."""

    def __init__(self, params: Any, model_config, video_config: Optional[VideoConfig] = None, *,
                 tokenizer: Optional[ClipTokenizer] = None, mesh: Optional[jax.sharding.Mesh] = None,
                 rules: Optional[Any] = None, _run_params: Optional[Any] = None):
        if "tracker" not in params:
            raise ValueError("video needs the tracker's params: convert the official checkpoint with its tracker")
        if not model_config.neck.add_sam2_neck:
            raise ValueError("video needs the tracker neck: the model config has neck.add_sam2_neck=False")
        self.config = model_config
        self.video_config = video_config or VideoConfig()
        self.params = params
        # what the compiled calls read: with bf16 params the image model's scanned stacks as their
        # uint16 bits (XLA:CPU would copy each bf16 stack to fp32 on every frame); shared with the
        # predictors of further prompts in the session
        if _run_params is None:
            from sam3_jax.model.sam3_image import image_model_inference_params

            _run_params = image_model_inference_params(params, model_config)
        self._run_params = _run_params
        self.tokenizer = tokenizer or ClipTokenizer()
        self.resolution = int(model_config.image_size)
        self._fns = _compiled(model_config.to_json(), self.video_config)
        self._encode_text, self._step = self._fns.encode_text, self._fns.step
        self.mesh = mesh
        if rules is None:
            from sam3_jax.config import LOGICAL_AXIS_RULES

            rules = LOGICAL_AXIS_RULES
        self.rules = tuple(rules)
        self._frames: Optional[_Frames] = None
        self._caching = True
        self._text_out = None
        self._geo: Optional[tuple[np.ndarray, int]] = None  # the visual prompt's box (cxcywh) and label
        self._has_text = False
        # the latest frames' backbone features, shared by the session's concepts (a frame is encoded
        # once whether it is prompted, propagated, clicked or tracked again from there)
        self.feature_cache_frames = 2
        # the tracking part of a frame runs on the live object slots plus the free ones births may take,
        # rounded up to one of these sizes (one compiled step each; None: every slot, always)
        n = self.video_config.max_objects
        self.slot_buckets: Optional[tuple[int, ...]] = tuple(sorted(
            {b for b in (2 ** k for k in range(n.bit_length())) if b < n} | {n}))
        # detect-and-track steps and tracker-only (click) steps run, by slot count
        self.step_sizes: collections.Counter[int] = collections.Counter()
        self.partial_sizes: collections.Counter[int] = collections.Counter()
        self._features: collections.OrderedDict[int, Any] = collections.OrderedDict()
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
    def start_session(self, frames: Any, *, cache_outputs: bool = True) -> None:
        """frames: a list of HxWx3 uint8 arrays (one size), a folder of image files (read lazily,
        in name order), or a video file (decoded lazily; needs PyAV, the "video" extra).
        cache_outputs: keep every frame's outputs on the host, as the official session does (needed
        for clicks and for propagations that return cached outputs; it grows with the video);
        without it host memory stays flat, every `propagate` detects and tracks, and clicks are
        refused."""
        self._frames = _Frames(frames)
        self._caching = bool(cache_outputs)
        self._features = collections.OrderedDict()
        self.reset()

    @property
    def num_frames(self) -> int:
        self._require_session("num_frames")
        return len(self._frames)

    def reset(self) -> None:
        """Forgets the prompt, every object and every cached output (the frames, and the features of
        the latest ones, stay)."""
        self._text_out = None
        self._geo = None
        self._has_text = False
        # distinct buffers per leaf: the step donates the state
        state = jax.tree.map(lambda x: jnp.array(x, copy=True), VideoState.empty(self.config, self.video_config))
        self._shardings = None if self.mesh is None else self.state_shardings(state)
        self._state = state if self.mesh is None else jax.device_put(state, self._shardings)
        self._removed = set()
        self._recent_births = 0
        self._prompt_frame: Optional[int] = None
        # the official session's host-side records (`Sam3VideoInferenceWithInstanceInteractivity`)
        self._actions: list[tuple[str, Optional[int], Optional[list[int]]]] = []  # action_history
        self._done: set[int] = set()  # frames with outputs (previous_stages_out)
        self._cache = _OutputCache()
        # further concept prompts of the session (add_prompt(..., append=True)): one predictor each,
        # sharing the frames; ids across prompts through `_gid` (prompt index, its own id) -> id
        self._text: Optional[str] = None
        self._children: list[tuple["Sam3VideoPredictor", str]] = []
        self._gid: dict[tuple[int, int], int] = {}
        self._next_gid = 0

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

    @property
    def _video_hw(self) -> tuple[int, int]:
        return tuple(int(v) for v in self._frames.hw)

    def _image(self, frame_idx: int) -> jax.Array:
        return jnp.asarray(preprocess_frame(self._frames[frame_idx], self.resolution))

    def _put(self, state: VideoState) -> VideoState:
        return state if self._shardings is None else jax.device_put(state, self._shardings)

    def _frame_features(self, frame_idx: int) -> Any:
        """A frame's backbone features (the detector's and the tracker's), from the session's cache
        of the latest `feature_cache_frames` frames, else encoded (and cached)."""
        feats = self._features.get(frame_idx)
        if feats is None:
            feats = self._fns.encode_frame(self._run_params, self._image(frame_idx))
            self._features[frame_idx] = feats
            while len(self._features) > max(1, self.feature_cache_frames):
                self._features.popitem(last=False)
        else:
            self._features.move_to_end(frame_idx)
        return feats

    def _geometry(self, frame_idx: int) -> Optional[tuple[jax.Array, jax.Array, jax.Array]]:
        """The detector's geometric prompt on a frame: none in a text-only session; otherwise one box
        slot, holding the visual prompt's box on its prompted frame and padding elsewhere (the
        official model gives the box on that frame only)."""
        if self._geo is None:
            return None
        box, label = self._geo
        here = frame_idx == self._prompt_frame
        return (jnp.asarray(box if here else np.zeros(4, np.float32))[None, None],
                jnp.full((1, 1), label if here else 0, jnp.int32), jnp.full((1, 1), not here))

    def _active_slots(self, det: dict) -> Optional[jax.Array]:
        """The slots a frame's tracking runs on (ascending): every live object and free slots for
        the births expected (as many as the previous frame's new detections, at least one, at most
        this frame's detections), padded with further free slots to the next of `slot_buckets`;
        None (all slots) when that is all of them, without buckets, or with a mesh (the object axis
        is split over devices); no slot when there is no object and no detection. A frame with more
        births than that runs again on every slot."""
        if not self.slot_buckets or self.mesh is not None:
            return None
        alive = np.asarray(self._state.alive)
        live, free = np.flatnonzero(alive), np.flatnonzero(~alive)
        valid = int(np.asarray(det["valid"]).sum())
        if len(live) == 0 and valid == 0:
            return jnp.zeros((0,), jnp.int32)
        need = len(live) + min(len(free), valid, max(1, self._recent_births))
        slots = self._bucket_slots(live, free, need)
        return None if slots is None else jnp.asarray(slots)

    def _bucket_slots(self, must: np.ndarray, spare: np.ndarray, need: Optional[int] = None) -> Optional[np.ndarray]:
        """Slots `must` (and spare ones up to `need`), padded with further spare slots to the next
        size of `slot_buckets`, ascending, int32; None for every slot (no buckets, a mesh, or a size
        that is the capacity)."""
        n = self.video_config.max_objects
        if not self.slot_buckets or self.mesh is not None:
            return None
        size = next((b for b in self.slot_buckets if b >= max(need or len(must), 1)), n)
        if size >= n:
            return None
        return np.sort(np.concatenate([must, spare[:size - len(must)]])).astype(np.int32)

    def _nothing_tracked(self) -> dict:
        """A frame's step outputs when it holds no object and no detection (the step would change
        nothing): no rows."""
        h, w = self._video_hw
        g4 = 4 * (self.resolution // self.config.vit.patch_size)
        no = np.zeros((0,), bool)
        z = np.zeros((0,), np.float32)
        low = np.zeros((0, g4, g4), np.float32)
        return {"obj_id": np.zeros((0,), np.int32), "present": no, "masks": np.zeros((0, h, w), bool),
                "low_res": low, "score": z, "tracker_score": z, "born": no, "removed": no, "suppressed": no,
                "occluded": no, "reconditioned": no, "num_detections": np.int32(0), "raw_low": low, "raw_score": z,
                "num_new": np.int32(0), "num_born": np.int32(0), "fits": np.bool_(True)}

    def _run(self, frame_idx: int, reverse: bool) -> dict:
        # as the official `allow_new_detections`: a text prompt detects new objects on every frame, a
        # box alone on its prompted frame only
        allow_new = self._has_text or (self._geo is not None and frame_idx == self._prompt_frame)
        feats = self._frame_features(frame_idx)
        det = self._fns.detect(self._run_params, feats, self._text_out, jnp.asarray(allow_new),
                               self._geometry(frame_idx))
        slots = self._active_slots(det)
        if slots is not None and len(slots) == 0:  # no object and no detection: nothing to track
            out = self._nothing_tracked()
        else:
            args = (det, feats["sam2_backbone_out"], jnp.int32(frame_idx), jnp.int32(len(self._frames)))
            self._state, out = self._step(self._run_params, self._state, *args, slots, reverse=reverse,
                                          video_hw=self._video_hw)
            if slots is not None and not bool(out["fits"]):  # more births than the subset's free slots
                self.step_sizes[len(slots)] += 1
                self._state, out = self._step(self._run_params, self._state, *args, None, reverse=reverse,
                                              video_hw=self._video_hw)
            self._state = self._put(self._state)  # keep the placement (one compiled step)
            out = jax.device_get(out)
        self.step_sizes[len(out["obj_id"])] += 1
        self._recent_births = int(out["num_new"])
        removed = np.asarray(out["obj_id"])[np.asarray(out["removed"])]
        self._removed.update(int(i) for i in removed)
        if self._caching:
            self._cache.record_step(frame_idx, out, keep_low_res=self.return_low_res)
        for i in removed:  # the official tracker drops a removed object's outputs
            self._cache.forget_tracker_outputs(int(i))
        self._done.add(frame_idx)
        return out

    def _slot(self, obj_id: int) -> Optional[int]:
        ids, alive = np.asarray(self._state.obj_id), np.asarray(self._state.alive)
        hit = np.flatnonzero(alive & (ids == obj_id))
        return int(hit[0]) if len(hit) else None

    def _live_ids(self) -> list[int]:
        ids, alive = np.asarray(self._state.obj_id), np.asarray(self._state.alive)
        return sorted(int(i) for i in ids[alive])

    # ------------------------------------------------------------------ prompts
    def add_prompt(self, frame_idx: int, text: Optional[str] = None, *, boxes: Any = None, box_labels: Any = None,
                   normalized: bool = True, append: bool = False) -> dict:
        """A concept prompt on a frame: a noun phrase, an exemplar box, or both. Detects on that frame
        and returns its objects. By default it restarts tracking (a new prompt replaces the previous
        one, as in the official model); with append=True it adds a concept to the session: each
        prompt is tracked as the official model tracks one (its own objects, merge and memory), and
        the outputs hold every prompt's objects with ids unique over the session and each object's
        prompt ("prompts": its text, or "visual" for a box alone).

        boxes: one box [[x0, y0, x1, y1]] (relative to the frame's width and height when normalized,
        else pixels), box_labels: [True] (positive, default) or [False]. As the official video
        model's visual prompt: the box joins the detector's prompt on this frame only; with a text,
        new objects are detected on every frame, with a box alone on this frame only (the others
        track what it found)."""
        self._require_session("add_prompt")
        frame_idx = self._check_frame(frame_idx)
        if text is not None and (not isinstance(text, str) or not text.strip()):
            raise ValueError(f"text must be a non-empty string, got {text!r}")
        geo = self._exemplar(boxes, box_labels, normalized)
        if text is None and geo is None:
            raise ValueError("empty prompt: give a text, an exemplar box (boxes=[[x0, y0, x1, y1]]), or both")
        if append and self._text_out is not None:
            return self._append_prompt(frame_idx, text, geo)
        return self._start_prompt(frame_idx, text, geo)

    def _start_prompt(self, frame_idx: int, text: Optional[str], geo: Optional[tuple[np.ndarray, int]]) -> dict:
        self.reset()
        self._text = text if text is not None else VISUAL_PROMPT_TEXT
        self._has_text = text is not None and text != VISUAL_PROMPT_TEXT  # the official reads "visual" as no text
        self._geo = geo
        tokens = self.tokenizer([self._text], context_length=int(self.config.text.context_length))
        self._text_out = self._encode_text(self._run_params, jnp.asarray(tokens))
        self._prompt_frame = frame_idx
        out = self._run(frame_idx, reverse=False)
        return postprocess(out, self._removed, low_res=self.return_low_res)

    def _exemplar(self, boxes: Any, box_labels: Any, normalized: bool) -> Optional[tuple[np.ndarray, int]]:
        """boxes / box_labels of `add_prompt` -> (normalised cxcywh float32 (4,), label) or None."""
        if boxes is None:
            if box_labels is not None:
                raise ValueError("box_labels given without boxes")
            return None
        b = np.asarray(boxes, np.float64)
        if b.ndim == 1:
            b = b[None]
        if b.ndim != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes must be [[x0, y0, x1, y1]], got shape {np.asarray(boxes).shape}")
        if len(b) != 1:
            raise ValueError(f"a video prompt takes one exemplar box (the official visual prompt), got {len(b)}; "
                             "refine objects with add_box / add_points instead")
        if not np.isfinite(b).all():
            raise ValueError("boxes must be finite")
        x0, y0, x1, y1 = b[0]
        if not normalized:
            h, w = self._video_hw
            x0, x1, y0, y1 = x0 / w, x1 / w, y0 / h, y1 / h
        if x1 < x0 or y1 < y0:
            raise ValueError(f"box {b[0].tolist()} has x1 < x0 or y1 < y0 (expected [x0, y0, x1, y1])")
        if min(x0, y0) < 0 or max(x1, y1) > 1:
            raise ValueError(f"box {b[0].tolist()} lies outside the frame")
        labels = [True] if box_labels is None else list(np.asarray(box_labels).reshape(-1))
        if len(labels) != 1 or not isinstance(labels[0], (bool, np.bool_)) and labels[0] not in (0, 1):
            raise ValueError(f"box_labels must be one boolean (True = positive), got {box_labels!r}")
        if not labels[0]:
            logging.warning("a negative box is the visual prompt (the official model warns of this too)")
        x, y, w, h = np.array([x0, y0, x1 - x0, y1 - y0], np.float32)  # the official takes xywh, in float32
        cxcywh = np.array([x + np.float32(0.5) * w, y + np.float32(0.5) * h, w, h], np.float32)
        return cxcywh, int(bool(labels[0]))

    # ------------------------------------------------------------------ several prompts
    def _tracks(self) -> list[tuple["Sam3VideoPredictor", str]]:
        return [(self, self._text)] + self._children

    def _append_prompt(self, frame_idx: int, text: Optional[str], geo: Optional[tuple[np.ndarray, int]]) -> dict:
        if not self._children:  # ids seen so far keep their values
            self._next_gid = int(self._state.max_obj_id) + 1
            self._gid = {(0, i): i for i in range(self._next_gid)}
        child = Sam3VideoPredictor(self.params, self.config, self.video_config, tokenizer=self.tokenizer,
                                   mesh=self.mesh, rules=self.rules, _run_params=self._run_params)
        child._frames, child._caching, child._features = self._frames, self._caching, self._features
        child.return_low_res = self.return_low_res
        child.feature_cache_frames, child.slot_buckets = self.feature_cache_frames, self.slot_buckets
        child.reset()
        self._children.append((child, text if text is not None else VISUAL_PROMPT_TEXT))
        return self._globalize(len(self._children), child._start_prompt(frame_idx, text, geo))

    def _global_id(self, k: int, local: int) -> int:
        key = (k, int(local))
        if key not in self._gid:
            self._gid[key] = self._next_gid
            self._next_gid += 1
        return self._gid[key]

    def _globalize(self, k: int, out: dict) -> dict:
        """One prompt's outputs with session-wide ids and the prompt of each object."""
        ids = np.asarray([self._global_id(k, i) for i in out["obj_ids"]], np.int64)
        return {**out, "obj_ids": ids, "prompts": [self._tracks()[k][1]] * len(ids)}

    def _route(self, obj_id: int) -> tuple[int, Optional[int]]:
        """(prompt index, its own id) of a session-wide id; (0, None) for an id not in use."""
        for (k, local), g in self._gid.items():
            if g == obj_id:
                return k, local
        return 0, None

    def _merge(self, outs: list[dict]) -> dict:
        """Outputs of every prompt on one frame -> one set, in id order."""
        ids = np.concatenate([o["obj_ids"] for o in outs])
        order = np.argsort(ids, kind="stable")
        merged = {"obj_ids": ids[order], "prompts": [p for o in outs for p in o["prompts"]]}
        merged["prompts"] = [merged["prompts"][i] for i in order]
        for key in outs[0]:
            if key not in merged:
                merged[key] = np.concatenate([o[key] for o in outs])[order]
        return merged

    def add_points(self, frame_idx: int, obj_id: int, points: Any, labels: Any, *, normalized: bool = True) -> dict:
        """Clicks on one object on any frame: refines a tracked object, or adds a new one under a new
        obj_id. points (P, 2) as (x, y), relative to the frame's width and height when normalized
        (default), else in the frame's pixels; labels (P,) 1 positive, 0 negative (2 / 3: the
        corners of a box, as `add_box` gives them). The clicks replace earlier ones on that frame.
        Returns the frame's objects; the next `propagate` runs the tracker for the clicked objects
        (and the objects born with them) and merges them into the other objects' outputs."""
        self._require_session("add_points")
        frame_idx = self._check_frame(frame_idx)
        obj_id = _check_obj_id(obj_id)
        pts = np.asarray(points, np.float64)
        lab = np.asarray(labels)
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
            raise ValueError(f"points must be a non-empty (P, 2) array of (x, y), got shape {pts.shape}")
        if lab.shape != (len(pts),) or not np.isin(lab, (0, 1, 2, 3)).all():
            raise ValueError(f"labels must be {len(pts)} values in {{0, 1, 2, 3}}, got {lab.tolist()}")
        if not np.isfinite(pts).all():
            raise ValueError("points must be finite")
        if not self._children:
            return self._click(frame_idx, obj_id, pts, lab.astype(np.int32), normalized)
        k, local = self._route(obj_id)
        track = self._tracks()[k][0]
        if local is None:  # a new object joins the first prompt under a fresh id of its own
            local = max([int(track._state.max_obj_id)] + [i for (j, i) in self._gid if j == k]) + 1
            self._gid[(k, local)] = obj_id
            self._next_gid = max(self._next_gid, obj_id + 1)
        return self._globalize(k, track._click(frame_idx, local, pts, lab.astype(np.int32), normalized))

    def add_box(self, frame_idx: int, obj_id: int, box: Any, *, normalized: bool = True) -> dict:
        """A box (x0, y0, x1, y1) on one object on any frame (relative to the frame's size when
        normalized, else in its pixels): the official tracker's box prompt, its two corners as
        points with labels 2 and 3. Otherwise as `add_points`."""
        b = np.asarray(box, np.float64).reshape(-1)
        if b.shape != (4,) or not np.isfinite(b).all() or b[2] < b[0] or b[3] < b[1]:
            raise ValueError(f"box must be (x0, y0, x1, y1) with x1 >= x0 and y1 >= y0, got {np.asarray(box).tolist()}")
        return self.add_points(frame_idx, obj_id, b.reshape(2, 2), np.array([2, 3], np.int32), normalized=normalized)

    def _click(self, frame_idx: int, obj_id: int, pts: np.ndarray, lab: np.ndarray, normalized: bool) -> dict:
        if not self._caching:
            raise RuntimeError("clicks need the session's cached outputs: start_session(frames, cache_outputs=True)")
        h, w = self._video_hw
        r = self.resolution
        scale = np.array([r, r]) if normalized else np.array([r / w, r / h])
        pts = (pts * scale).astype(np.float32)
        cap = interact.MAX_PROMPT_POINTS
        if len(pts) > cap:  # the official keeps the first and last halves
            logging.warning("%d points on frame %d: only the first %d and the last %d are used", len(pts), frame_idx,
                            cap // 2, cap - cap // 2)
            keep = np.r_[np.arange(cap // 2), np.arange(len(pts) - (cap - cap // 2), len(pts))]
            pts, lab = pts[keep], lab[keep]
        slot = self._slot(obj_id)
        new = slot is None
        if new:
            free = np.flatnonzero(~np.asarray(self._state.alive))
            if len(free) == 0:
                raise RuntimeError(f"cannot add object {obj_id}: all {self.video_config.max_objects} object slots are "
                                   f"in use (raise VideoConfig.max_objects or remove an object)")
            slot = int(free[0])
            self._state = self._put(interact.new_object(self._state, slot, obj_id))
            self._cache.new_object(obj_id)
        sam2 = self._frame_features(frame_idx)["sam2_backbone_out"]
        prev = None if new else self._cache.raw.get(frame_idx, {}).get(obj_id)
        prev_low = None if prev is None else jnp.asarray(prev[0])[None]
        click = self._fns.click(self._run_params, sam2, jnp.asarray(pts)[None], jnp.asarray(lab)[None], prev_low,
                                multimask_output=len(lab) <= 1)
        stored_low, stored_score, has_stored = self._stored(frame_idx)
        self._state, members = self._fns.commit(self._run_params, self._state, sam2, jnp.int32(frame_idx),
                                                jnp.int32(slot), click, stored_low, stored_score, has_stored)
        self._state = self._put(self._state)
        members = np.asarray(members)
        ids = np.asarray(self._state.obj_id)
        mates = [int(i) for i in ids[members] if int(i) != obj_id]
        low = np.asarray(click["low"])
        c = self._cache
        c.set_raw(frame_idx, obj_id, low, float(click["score"]))
        for i in mates:  # consolidation gives an object without an output here an absent one
            if i not in c.raw.get(frame_idx, {}):
                c.set_raw(frame_idx, i, np.full_like(low, NO_OBJ_SCORE), 10.0)
        c.point_frames[obj_id].add(frame_idx)
        c.mask_frames[obj_id].discard(frame_idx)
        if len(mates) == 0:
            self._clear_around(obj_id, slot, frame_idx)
        # detector-given conditioning frames near the click stop conditioning the group
        window = self.video_config.refinement_cond_frame_window
        near = sorted(f for f in c.mask_frames[obj_id]
                      if f not in c.point_frames[obj_id] and abs(f - frame_idx) <= window)
        if near:
            for i in [obj_id] + mates:
                c.mask_frames[i].difference_update(near)
                c.point_frames[i].difference_update(near)
            self._state = self._put(interact.downgrade_frames(self._state, jnp.asarray(members),
                                                              jnp.asarray(near, jnp.int32)))
        c.obj_score[obj_id] = 1.0
        c.tscore.setdefault(frame_idx, {})[obj_id] = 1.0
        for hidden in c.suppressed.values():
            hidden.discard(obj_id)
        self._removed.discard(obj_id)
        self._actions.append(("add" if new else "refine", frame_idx, [obj_id]))
        mask = np.asarray(self._fns.click_mask(click["low"], video_hw=self._video_hw))
        c.update_masks(frame_idx, {obj_id: mask}, {obj_id: low} if self.return_low_res else None)
        return self._cached_output(frame_idx)

    def _stored(self, frame_idx: int) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The tracker outputs kept for a frame, over the slots: low-res logits, object scores, whether kept."""
        n, low = self.video_config.max_objects, 4 * (self.resolution // self.config.vit.patch_size)
        stored_low = np.zeros((n, low, low), np.float32)
        stored_score = np.zeros((n,), np.float32)
        has = np.zeros((n,), bool)
        raw = self._cache.raw.get(frame_idx, {})
        ids, alive = np.asarray(self._state.obj_id), np.asarray(self._state.alive)
        for r in np.flatnonzero(alive):
            e = raw.get(int(ids[r]))
            if e is not None:
                stored_low[r], stored_score[r], has[r] = e[0], e[1], True
        return jnp.asarray(stored_low), jnp.asarray(stored_score), jnp.asarray(has)

    def _clear_around(self, obj_id: int, slot: int, frame_idx: int) -> None:
        """Official `_clear_non_cond_mem_around_input` (objects tracked alone): the object's kept
        non-conditioning outputs within num_maskmem frames of a conditioning frame are dropped
        (a later click there gets no previous mask)."""
        mem = self._state.memory
        frames, is_cond = np.asarray(mem.frame[slot]), np.asarray(mem.is_cond[slot])
        cond = set(int(f) for f in frames[is_cond])
        k = int(self.config.tracker.num_maskmem)
        for t in range(frame_idx - k, frame_idx + k + 1):
            if t not in cond:
                self._cache.raw.get(t, {}).pop(obj_id, None)

    def remove_object(self, obj_id: int) -> None:
        """Stops tracking an object (its slot is freed; its id is not reused by detections) and drops
        it from the cached outputs."""
        self._require_session("remove_object")
        if self._children:
            k, local = self._route(obj_id)
            if local is None:
                raise KeyError(f"unknown obj_id {obj_id}; ids in use: {sorted(self._gid.values())}")
            self._tracks()[k][0]._remove(local)
            return
        self._remove(obj_id)

    def _remove(self, obj_id: int) -> None:
        slot = self._slot(obj_id)
        if slot is None:
            raise KeyError(f"unknown obj_id {obj_id}; live objects: {self._live_ids()}")
        self._state = self._put(self._state.replace(alive=self._state.alive.at[slot].set(False),
                                                    obj_id=self._state.obj_id.at[slot].set(-1)))
        self._removed.add(int(obj_id))
        self._cache.forget(int(obj_id))
        self._actions.append(("remove", None, [int(obj_id)]))

    # ------------------------------------------------------------------ propagation
    def propagate(self, direction: str = "forward", start_frame: Optional[int] = None,
                  max_frames: Optional[int] = None) -> Iterator[tuple[int, dict]]:
        """Yields (frame_idx, {"obj_ids", "scores", "boxes_xywh" (normalised), "masks" (N, H, W)
        bool}) for each frame from start_frame (default: the first frame with outputs, i.e. the
        prompted one) in `direction` ("forward", "backward" or "both": forward, then backward from
        start_frame - 1).

        As the official session decides from its action history: the first propagation after a
        prompt (and the second, the other way) detects and tracks every object; after clicks, the
        next one or two run the tracker only for the clicked objects and merge them into the other
        objects' cached outputs; otherwise the cached outputs are returned."""
        self._require_session("propagate")
        if not self._done and not self._actions:
            raise RuntimeError("call add_prompt(frame_idx, text=...) or add_points(...) before propagate()")
        if direction not in ("forward", "backward", "both"):
            raise ValueError(f"direction must be 'forward', 'backward' or 'both', got {direction!r}")
        start = None if start_frame is None else self._check_frame(start_frame)
        if start is None and not self._done:
            raise RuntimeError("no frame has outputs yet: give start_frame")
        if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 0):
            raise ValueError(f"max_frames must be a non-negative int or None, got {max_frames!r}")
        if self._children and start is None:  # one frame order for every prompt
            start = min(f for t, _ in self._tracks() for f in (t._done or {len(self._frames) - 1}))
        for reverse in {"forward": (False,), "backward": (True,), "both": (False, True)}[direction]:
            if not self._children:
                yield from (item for item in self._propagate_once(start, max_frames, reverse) if item[1] is not None)
            else:
                yield from self._propagate_concepts(start, max_frames, reverse)

    def _propagate_concepts(self, start: Optional[int], max_frames: Optional[int],
                            reverse: bool) -> Iterator[tuple[int, dict]]:
        """Every concept's propagation in lockstep, so that a frame is encoded once for all of them
        (the shared feature cache): each generator is advanced one step per round (a step runs at
        most one frame; detect-and-track steps still held back by the hot-start delay yield None);
        a frame comes out once every concept has given it."""
        gens = [t._propagate_once(start, max_frames, reverse) for t, _ in self._tracks()]
        ready: list[collections.deque] = [collections.deque() for _ in gens]
        live = [True] * len(gens)
        while any(live) or all(ready):
            for k, gen in enumerate(gens):
                if live[k]:
                    item = next(gen, None)
                    if item is None:
                        live[k] = False
                    elif item[1] is not None:
                        ready[k].append(item)
            while all(ready):
                items = [q.popleft() for q in ready]
                frame_idx = items[0][0]
                if any(f != frame_idx for f, _ in items):  # one order for all (same start and direction)
                    raise RuntimeError(f"prompts propagated out of step: frames {[f for f, _ in items]}")
                yield frame_idx, self._merge([self._globalize(k, out) for k, (_, out) in enumerate(items)])
            if not any(live) and any(ready):
                raise RuntimeError("prompts propagated out of step: a prompt gave fewer frames")

    def _next_propagation(self) -> tuple[str, Optional[list[int]]]:
        """The official `parse_action_history_for_propagation` (without an output cache: always full)."""
        acts = self._actions
        if not acts or not self._caching:
            return "full", None
        kind, frame, ids = acts[-1]
        if kind in ("full", "partial", "fetch"):
            if kind == "fetch":
                return "fetch", None
            if (len(acts) > 1 and acts[-2][0] in ("full", "partial")) or frame in (0, len(self._frames) - 1):
                return "fetch", None
            return kind, ids
        clicked: list[int] = []
        for kind, _, ids in reversed(acts):
            if kind in ("full", "partial", "fetch"):
                break
            if kind in ("add", "refine"):
                clicked += ids
        return ("partial", sorted(set(clicked))) if clicked else ("fetch", None)

    def _propagate_once(self, start_arg: Optional[int], max_frames: Optional[int],
                        reverse: bool) -> Iterator[tuple[int, Optional[dict]]]:
        """One propagation as `_next_propagation` decides; yields (frame, outputs), and (frame, None)
        after a frame that is run but held back (hot-start delay)."""
        kind, ids = self._next_propagation()
        self._actions.append((kind, start_arg, ids))
        start = min(self._done) if start_arg is None else start_arg
        n = len(self._frames)
        count = n if max_frames is None else max_frames
        if reverse:
            end = max(start - count, 0)
            order = range(start - 1, end - 1, -1)
        else:
            end = min(start + count, n - 1)
            order = range(start, end + 1)
        if kind == "full":
            if self._text_out is None:
                raise RuntimeError("call add_prompt(frame_idx, text=...) before propagate()")
            yield from self._propagate_full(order, end, reverse)
        elif kind == "partial":
            yield from self._propagate_partial(order, ids, reverse)
        else:
            for f in order:
                yield f, self._cached_output(f)

    def _propagate_full(self, order: range, end: int, reverse: bool) -> Iterator[tuple[int, dict]]:
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
            if not ready:
                yield frame_idx, None
            for f, out in ready:
                suppressed = {int(i) for i in np.asarray(out["obj_id"])[np.asarray(out["suppressed"])]}
                hidden = set(self._removed) | suppressed
                if self._caching:
                    self._cache.settle(f, hidden, suppressed)
                yield f, postprocess(out, hidden, low_res=self.return_low_res)

    def _propagate_partial(self, order: range, ids: list[int], reverse: bool) -> Iterator[tuple[int, dict]]:
        slots = {i: self._slot(i) for i in ids}
        slots = {i: s for i, s in slots.items() if s is not None}
        group, alive = np.asarray(self._state.group), np.asarray(self._state.alive)
        active = alive & np.isin(group, [int(group[s]) for s in slots.values()])
        obj_ids = np.asarray(self._state.obj_id)
        rows = np.flatnonzero(active)
        alone = {int(g): int(np.sum(active & (group == g))) == 1 for g in group[rows]}
        subset = self._bucket_slots(rows, np.flatnonzero(~active))
        for frame_idx in order:
            sam2 = self._frame_features(frame_idx)["sam2_backbone_out"]
            stored_low, stored_score, _ = self._stored(frame_idx)
            self._state, out = self._fns.partial(self._run_params, self._state, sam2, jnp.int32(frame_idx),
                                                 jnp.int32(len(self._frames)), jnp.asarray(active), stored_low,
                                                 stored_score, None if subset is None else jnp.asarray(subset),
                                                 reverse=reverse, video_hw=self._video_hw)
            self._state = self._put(self._state)
            out = jax.device_get(out)
            self.partial_sizes[len(active) if subset is None else len(subset)] += 1
            if subset is not None:  # outputs over the subset -> over the slots (rows outside: never read)
                out = {k: _spread(v, subset, len(active)) for k, v in out.items()}
            for r in rows:
                if out["stored"][r] and alone[int(group[r])]:
                    self._clear_around(int(obj_ids[r]), int(r), frame_idx)
            for r in rows:
                self._cache.set_raw(frame_idx, int(obj_ids[r]), out["raw_low"][r], float(out["raw_score"][r]))
            refined, low = {}, {}
            for i, s in slots.items():
                self._cache.tscore.setdefault(frame_idx, {})[i] = float(out["score"][s])
                refined[i], low[i] = out["masks"][s], out["low"][s]
            self._cache.update_masks(frame_idx, refined, low if self.return_low_res else None)
            yield frame_idx, self._cached_output(frame_idx)

    def _cached_output(self, frame_idx: int) -> dict:
        """A frame's outputs from the cache (official `_build_tracker_output` + `_postprocess_output`)."""
        c = self._cache
        masks = c.frame_masks(frame_idx, self._video_hw)
        ids = sorted(masks)
        h, w = self._video_hw
        tscore = c.tscore.get(frame_idx, {})
        outputs = {
            "obj_id": np.asarray(ids, np.int64), "present": np.ones((len(ids),), bool),
            "masks": np.stack([masks[i] for i in ids]) if ids else np.zeros((0, h, w), bool),
            "score": np.asarray([c.obj_score.get(i, 0.0) for i in ids], np.float32),
            "tracker_score": np.asarray([tscore.get(i, 0.0) for i in ids], np.float32),
        }
        if self.return_low_res:
            g4 = 4 * (self.resolution // self.config.vit.patch_size)
            lows = c.low.get(frame_idx, {})
            outputs["low_res"] = np.stack([lows.get(i, np.zeros((g4, g4), np.float32)) for i in ids]) if ids \
                else np.zeros((0, g4, g4), np.float32)
        return postprocess(outputs, c.suppressed.get(frame_idx, set()), low_res=self.return_low_res)

    @property
    def counts(self) -> dict[str, int]:
        """Outcomes the fixed capacities forced so far: births dropped for lack of an object slot,
        memory writes dropped for lack of a memory slot."""
        tracks = [t for t, _ in self._tracks()]
        return {"births_dropped": sum(int(t._state.num_dropped) for t in tracks),
                "memory_dropped": sum(int(t._state.memory_dropped) for t in tracks)}


def _spread(x: Any, slots: np.ndarray, n: int) -> np.ndarray:
    """Per-slot outputs of a slot subset -> an (n, ...) array with them at their slots (zeros elsewhere)."""
    x = np.asarray(x)
    full = np.zeros((n,) + x.shape[1:], x.dtype)
    full[slots] = x
    return full


def _check_obj_id(obj_id: Any) -> int:
    if not isinstance(obj_id, (int, np.integer)) or isinstance(obj_id, bool) or obj_id < 0:
        raise TypeError(f"obj_id must be a non-negative int, got {obj_id!r}")
    return int(obj_id)


class _OutputCache:
    """The session's host-side records, as the official session keeps them:

    masks[frame]: {obj_id: packed bool mask at the video's size} (official `cached_frame_outputs`,
    what fetching and tracker-only propagation return for objects not being refined); low[frame]:
    their low-res logits (only with `return_low_res`); tscore[frame]: {obj_id: tracker score};
    suppressed[frame]: ids hidden on that frame; obj_score: {obj_id: score}; raw[frame]: {obj_id:
    (low-res logits, object-score logit)}, the tracker's own output per object and frame (official
    per-object output dicts: a click's previous mask, a group's consolidation); point_frames /
    mask_frames: {obj_id: frames with clicks / with a mask given by the detector}."""

    def __init__(self):
        self.masks: dict[int, dict[int, tuple[np.ndarray, tuple]]] = {}
        self.low: dict[int, dict[int, np.ndarray]] = {}
        self.tscore: dict[int, dict[int, float]] = {}
        self.suppressed: dict[int, set[int]] = {}
        self.obj_score: dict[int, float] = {}
        self.raw: dict[int, dict[int, tuple[np.ndarray, float]]] = {}
        self.point_frames: dict[int, set[int]] = collections.defaultdict(set)
        self.mask_frames: dict[int, set[int]] = collections.defaultdict(set)

    def new_object(self, obj_id: int) -> None:
        self.point_frames[obj_id] = set()
        self.mask_frames[obj_id] = set()

    def set_raw(self, frame: int, obj_id: int, low: np.ndarray, score: float) -> None:
        self.raw.setdefault(frame, {})[obj_id] = (np.asarray(low, np.float32), float(score))

    def record_step(self, frame: int, out: dict, *, keep_low_res: bool) -> None:
        """A detect-and-track step's outputs (before the frame's hidden objects are known)."""
        ids, present = np.asarray(out["obj_id"]), np.asarray(out["present"])
        masks, tscore = {}, self.tscore.setdefault(frame, {})
        tscore.clear()
        low = {}
        for r in np.flatnonzero(present):
            i = int(ids[r])
            self.set_raw(frame, i, out["raw_low"][r], float(out["raw_score"][r]))
            tscore[i] = float(out["tracker_score"][r])
            self.obj_score[i] = float(out["score"][r])
            if out["born"][r]:
                self.new_object(i)
                self.mask_frames[i].add(frame)
            elif out["reconditioned"][r]:
                self.mask_frames[i].add(frame)
            masks[i] = out["masks"][r]
            if keep_low_res:
                low[i] = out["low_res"][r]
        self.masks[frame] = {i: _pack(m) for i, m in masks.items()}
        self.low[frame] = low
        self.suppressed[frame] = set()

    def settle(self, frame: int, hidden: set[int], suppressed: set[int]) -> None:
        """The frame's outputs are final: hidden objects leave its cache."""
        self.masks[frame] = {i: m for i, m in self.masks.get(frame, {}).items() if i not in hidden}
        self.suppressed[frame] = set(suppressed)

    def update_masks(self, frame: int, masks: dict[int, np.ndarray], low: Optional[dict] = None) -> None:
        """Refined objects' masks replace their cached ones (those hidden on the frame stay out)."""
        hidden = self.suppressed.get(frame, set())
        cached = self.masks.setdefault(frame, {})
        for i, m in masks.items():
            cached[i] = _pack(np.asarray(m, bool))
            if low is not None:
                self.low.setdefault(frame, {})[i] = np.asarray(low[i], np.float32)
        self.masks[frame] = {i: m for i, m in cached.items() if i not in hidden}

    def frame_masks(self, frame: int, hw: tuple[int, int]) -> dict[int, np.ndarray]:
        return {i: _unpack(p, hw) for i, p in self.masks.get(frame, {}).items()}

    def forget_tracker_outputs(self, obj_id: int) -> None:
        for per in self.raw.values():
            per.pop(obj_id, None)

    def forget(self, obj_id: int) -> None:
        """A removed object: out of every frame's cache and the scores."""
        self.forget_tracker_outputs(obj_id)
        for per in list(self.masks.values()) + list(self.low.values()):
            per.pop(obj_id, None)
        self.obj_score.pop(obj_id, None)


def _pack(mask: np.ndarray) -> np.ndarray:
    return np.packbits(np.asarray(mask, bool).reshape(-1))


def _unpack(packed: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    h, w = hw
    return np.unpackbits(packed, count=h * w).reshape(h, w).astype(bool)
