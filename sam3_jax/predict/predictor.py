"""`Sam3ImagePredictor`: promptable concept segmentation on one image, many prompts.

    predictor = Sam3ImagePredictor.from_checkpoint("converted/")
    predictor.set_image(image)                      # HxWx3 uint8 array or PIL image; encodes once
    out = predictor.predict(text="a dog")           # masks (N,H,W) bool, boxes (N,4) xyxy px, scores (N,)
    out = predictor.predict(boxes=[[x0, y0, x1, y1]], box_labels=[True])   # exemplar boxes only
    outs = predictor.predict_batch(texts=["a dog", "a cat"])               # one compiled call per prompt_chunk
    inst = predictor.predict_instance(points=[[120, 80]], point_labels=[1])  # clicks / box / mask
    inst = predictor.predict_instance(points=[[120, 80], [60, 90]], point_labels=[1, 0],
                                      mask_input=inst["low_res_logits"][[inst["iou"].argmax()]])

`set_image` sends the uint8 image to the device and resizes and normalises it there, with the
official processor's fixed-point arithmetic (bit-identical to the host `preprocess`; a small
function compiled once per 128-pixel size bucket and tap count), then encodes it once, with the
fusion encoder's prompt-independent first self-attention (`Sam3Image.prompt_independent`).
With bf16 params the scanned weight stacks are kept as their uint16 bits and every compiled model
call runs inside `layers.stack.for_inference` (XLA:CPU would copy each bf16 stack to fp32 per call).

Post-processing follows the official `Sam3Processor`: score = sigmoid(logit) * sigmoid(presence),
keep score > threshold (no NMS), boxes cxcywh -> xyxy scaled to the original size, mask logits
resized bilinearly (torch semantics) to the original size, then sigmoid > 0.5. Results are in
query order. A call runs in three jitted steps: the text encoder for all of its prompts in one
batch (its weights are read once, not once per prompt), scores and boxes of every query (fusion
encoder, decoder, scoring; `prompt_chunk` prompts per call), then the segmentation head for just
the kept queries of the prompts that kept any; the official model makes masks for all queries
and drops them after, so the outputs are the same while a prompt that keeps nothing does no mask
work. Compiled functions are cached per input shape: prompts are padded to fixed sizes (box count
to a multiple of 4, kept-mask count to a power of two), so repeated calls reuse them.

Instance prompts (`predict_instance`, the official `Sam3Image.predict_inst`) segment one object per
prompt with the tracker's SAM heads; they need a checkpoint converted with the tracker (a `tracker`
subtree in the params). `set_image` then also caches the tracker neck's projected high-resolution
levels and the g-level embedding (+ `no_mem_embed`), so a click only runs the prompt encoder, the
mask decoder and the post-processing (`sam3_jax.model.tracker.instance`). The compiled click
function is cached per (batch, number of points, box or not, mask or not, multimask, image size).
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sam3_jax.formats.image import normalize_table, resize_taps, resize_uint8_on_device, to_uint8_rgb
from sam3_jax.layers.resize import resize_bilinear
from sam3_jax.layers.stack import for_inference
from sam3_jax.model.tokenizer import ClipTokenizer
from sam3_jax.model.tracker import instance
from sam3_jax.model.tracker.prompt_encoder import check_point_labels

VISUAL_PROMPT_TEXT = "visual"  # what the official processor encodes when only boxes are given


def _round_up(n: int, k: int) -> int:
    return max(k, -(-n // k) * k)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


# set_image pads images to a multiple of this many pixels per side (one compiled resize per bucket)
IMAGE_BUCKET = 128
_NORMALIZE = normalize_table()


def device_preprocess(image: jax.Array, taps_w, taps_h) -> jax.Array:
    """Padded uint8 (H', W', 3) -> (1, R, R, 3) float32: the official processor's exact resize
    (`resize_taps` per axis; only the taps' source rows / columns are read, so padding is ignored)
    and normalisation (a table of the host arithmetic), on the device."""
    return jnp.asarray(_NORMALIZE)[resize_uint8_on_device(image, taps_w, taps_h).astype(jnp.int32)][None]


class Sam3ImagePredictor:
    """prompt_chunk: how many prompts one compiled grounding call (fusion encoder, decoder,
    scoring) takes in `predict_batch` (the rest run in further calls of the same compiled
    function; the text encoder takes them all at once). Default: 1 on the CPU backend, where a
    batch of prompts in the fusion encoder only adds memory traffic (16 prompts at once took 1.3x
    the time of 16 single calls at 1008 px), and all of them on accelerators."""

    def __init__(self, params: Any, model_config, *, tokenizer: Optional[ClipTokenizer] = None,
                 prompt_chunk: Optional[int] = None):
        from sam3_jax.model.sam3_image import Sam3Image, image_model_inference_params

        if prompt_chunk is not None and (not isinstance(prompt_chunk, int) or prompt_chunk < 1):
            raise ValueError(f"prompt_chunk must be a positive int or None, got {prompt_chunk!r}")
        if prompt_chunk is None and jax.default_backend() == "cpu":
            prompt_chunk = 1
        self.prompt_chunk = prompt_chunk

        self.config = model_config
        self.model = Sam3Image(model_config)
        self.params = params
        self.tokenizer = tokenizer or ClipTokenizer()
        self.resolution = int(model_config.image_size)
        self.context_length = int(model_config.text.context_length)
        self._image_out = None
        self._inst_features = None
        self._orig_hw: Optional[tuple[int, int]] = None
        self._image = None
        model = self.model
        cfg = model_config
        # The detector's apply sees only its own parts; the tracker's SAM heads (if converted) are
        # used by the instance path.
        # (bf16 stacks kept as their bits: XLA:CPU would copy each to fp32 on every call, layers/stack.py)
        self._detector_params = image_model_inference_params(
            {k: v for k, v in params.items() if k != "tracker"}, model_config)
        try:
            self._heads = instance.tracker_heads(params)
            self._no_heads_error = None
        except ValueError as e:
            self._heads, self._no_heads_error = None, str(e)
        if self._heads is not None and not model_config.neck.add_sam2_neck:
            self._heads, self._no_heads_error = None, (
                "instance prompts need the tracker neck, but this model config has neck.add_sam2_neck=False")

        @jax.jit
        @for_inference
        def encode_image(params, heads, images):
            out = model.apply({"params": params}, images, method=type(model).forward_image)
            image_out = model.apply({"params": params}, {"backbone_fpn": out["backbone_fpn"],
                                    "vision_pos_enc": out["vision_pos_enc"]}, method=type(model).prompt_independent)
            inst = None
            if heads is not None:
                inst = instance.image_features(cfg, heads, out["sam2_backbone_out"]["backbone_fpn"])
            return image_out, inst

        @jax.jit
        @for_inference
        def encode_text(params, tokens):
            out = model.apply({"params": params}, tokens, method=type(model).forward_text)
            return {k: out[k] for k in ("language_features", "language_mask")}

        @jax.jit
        @for_inference
        def ground(params, image_out, text, start, boxes, box_labels, box_mask):
            """Rows start .. start + len(boxes) of the encoded texts `text` (one compiled shape for
            every chunk of a batch)."""
            rows = {k: jax.lax.dynamic_slice_in_dim(v, start, boxes.shape[0]) for k, v in text.items()}
            out = model.apply(
                {"params": params}, image_out, rows, boxes, box_labels, box_mask,
                method=type(model).detections,
            )
            scores = jax.nn.sigmoid(out["pred_logits"][..., 0]) * jax.nn.sigmoid(out["presence_logit_dec"])
            keep = ("memory", "prompt", "prompt_mask", "queries")
            return {"scores": scores, "pred_boxes_xyxy": out["pred_boxes_xyxy"], **{k: out[k] for k in keep}}

        @functools.partial(jax.jit, static_argnames=("size",))
        @for_inference
        def masks(params, image_out, det, row, query_idx, *, size):
            """Masks of the kept queries `query_idx` (K,) of prompt `row` only: the segmentation
            head on those queries, bilinear to `size`, sigmoid > 0.5 -> (K, H, W) bool."""
            pick = {k: jax.lax.dynamic_index_in_dim(det[k], row, keepdims=True)
                    for k in ("memory", "prompt", "prompt_mask", "queries")}
            queries = jnp.take(pick["queries"], query_idx, axis=1)
            logits = model.apply({"params": params}, image_out["backbone_fpn"], pick["memory"], pick["prompt"],
                                 pick["prompt_mask"], queries, method=type(model).segment)["pred_masks"][0]
            return _upsample_binarise(logits, size)

        @functools.partial(jax.jit, static_argnames=("orig_hw", "multimask_output"))
        def segment_instances(heads, features, points, labels, mask_input, *, orig_hw, multimask_output):
            return instance.predict(cfg, heads, features, points, labels, mask_input, orig_hw=orig_hw,
                                    multimask_output=multimask_output)

        self._prepare = jax.jit(device_preprocess)
        self._encode_image = encode_image
        self._encode_text = encode_text
        self._ground = ground
        self._masks = masks
        self._segment_instances = segment_instances

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(cls, ckpt_dir: str, dtype: Optional[str] = None) -> "Sam3ImagePredictor":
        """Loads a directory written by `convert_weights.py` (or a training checkpoint export).

        dtype: the compute dtype, "float32" or "bfloat16" (default: the stored parameters' dtype,
        so a checkpoint converted with `--dtype bfloat16` runs the bf16 path). In bf16 the model
        keeps the official autocast's float32 parts (norm statistics, softmax, the decoder FFN,
        box refinement, presence), its matmuls accumulate in float32 and round once to bf16 (as
        autocast's GEMMs; on a CPU with AMX / AVX-512 BF16 they run on its bf16 units), and the
        mask logits are upsampled in float32."""
        import ml_collections

        from sam3_jax.convert.checkpoint import load_converted, read_manifest
        from sam3_jax.model.sam3_image import DETECTOR_PARTS, image_model_target_shapes

        manifest = read_manifest(ckpt_dir)
        missing = sorted(set(manifest.get("not_converted", {})) & set(DETECTOR_PARTS))
        if missing:
            raise ValueError(
                f"{ckpt_dir} lacks detector parts {missing}: it was converted by an older sam3_jax; "
                "convert the official checkpoint again"
            )
        cfg = ml_collections.ConfigDict(manifest["model_config"])
        stored = manifest.get("dtype", "float32")
        if dtype not in (None, "float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
        cfg.dtype = dtype or stored
        dtype = jnp.dtype(stored)
        target = image_model_target_shapes(cfg, dtype=dtype)
        if manifest.get("tracker"):  # converted with the tracker (clicks)
            from sam3_jax.model.tracker.tracker import tracker_target_shapes

            target["tracker"] = tracker_target_shapes(cfg, dtype=dtype)
        params, _ = load_converted(ckpt_dir, target)
        return cls(params, cfg)

    # ------------------------------------------------------------------ image
    def set_image(self, image: Any) -> None:
        """Encodes the image once (trunk + necks); later prompts reuse the cached features."""
        img = to_uint8_rgb(image)
        self._orig_hw = (int(img.shape[0]), int(img.shape[1]))
        self._image_out, self._inst_features = self._encode_image(
            self._detector_params, self._heads, self._prepare_image(img))
        self._image = img

    def _prepare_image(self, img: np.ndarray) -> jax.Array:
        """uint8 (H, W, 3) -> the model's (1, R, R, 3) float32 input, resized and normalised on the
        device (only the uint8 image travels). The image is zero-padded to a multiple of
        IMAGE_BUCKET and the taps to a multiple of 4, so the small resize function compiles once
        per size bucket and tap count (3-4 taps when enlarging, more when shrinking a lot), not per
        image size; padding is never read."""
        h, w = img.shape[:2]
        padded = np.pad(img, ((0, -h % IMAGE_BUCKET), (0, -w % IMAGE_BUCKET), (0, 0)))
        r = self.resolution
        return self._prepare(jnp.asarray(padded), resize_taps(w, r, 4), resize_taps(h, r, 4))

    def _require_image(self, method: str = "predict") -> None:
        if self._image_out is None:
            raise RuntimeError(f"call set_image(image) before {method}()")

    # ------------------------------------------------------------------ prompts
    def _tokens(self, texts: Sequence[str]) -> np.ndarray:
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"text prompts must be strings, got {type(t).__name__}")
        return self.tokenizer(list(texts), context_length=self.context_length)

    def _boxes(self, boxes, box_labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(M, 4) xyxy pixels -> padded normalised cxcywh (1, M', 4), labels, padding mask."""
        h, w = self._orig_hw
        if boxes is None:
            m = 0
            b = np.zeros((0, 4), np.float32)
        else:
            b = np.asarray(boxes, dtype=np.float64)
            if b.ndim != 2 or b.shape[1] != 4:
                raise ValueError(f"boxes must have shape (M, 4) as [x0, y0, x1, y1] pixels, got {b.shape}")
            if not np.all(np.isfinite(b)):
                raise ValueError("boxes contain NaN or infinite values")
            m = b.shape[0]
            for i, (x0, y0, x1, y1) in enumerate(b):
                if x1 < x0 or y1 < y0:
                    raise ValueError(f"box {i} {b[i].tolist()} has x1 < x0 or y1 < y0 (expected [x0, y0, x1, y1])")
                if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
                    raise ValueError(f"box {i} {b[i].tolist()} lies outside the {w}x{h} image")
        if box_labels is None:
            labels = np.ones(m, dtype=bool)
        else:
            labels = np.asarray(box_labels)
            if labels.shape != (m,):
                raise ValueError(f"box_labels must have shape ({m},), got {labels.shape}")
            if labels.dtype != bool:
                raise TypeError(f"box_labels must be booleans (True = positive exemplar), got dtype {labels.dtype}")
        padded = _round_up(m, 4) if m else 0
        cxcywh = np.zeros((1, padded, 4), np.float32)
        if m:
            scale = np.array([w, h, w, h], np.float64)
            n = b / scale
            cxcywh[0, :m] = np.stack(
                [(n[:, 0] + n[:, 2]) / 2, (n[:, 1] + n[:, 3]) / 2, n[:, 2] - n[:, 0], n[:, 3] - n[:, 1]], axis=1
            )
        lab = np.zeros((1, padded), np.int32)
        lab[0, :m] = labels.astype(np.int32)
        mask = np.ones((1, padded), bool)
        mask[0, :m] = False
        return cxcywh, lab, mask

    def _run(self, texts: Sequence[str], boxes, box_labels, threshold: float) -> list[dict[str, np.ndarray]]:
        """Scores and boxes of every query for each prompt (one compiled call per `prompt_chunk`
        prompts), then masks for just the kept queries of the prompts that kept any (one compiled
        call per such prompt; no mask work at all when nothing passes the threshold). Kept counts
        are padded to a power of two so the mask function compiles once per bucket."""
        self._require_image()
        tokens = self._tokens(texts)
        cxcywh, lab, mask = self._boxes(boxes, box_labels)
        p = len(texts)
        cxcywh, lab, mask = (np.repeat(a, p, axis=0) for a in (cxcywh, lab, mask))
        chunk = min(p, self.prompt_chunk or p)
        n_chunks = -(-p // chunk)
        # Every text in one call (the text encoder reads its weights once for all prompts), padded
        # with copies of the last prompt to a power of two times the chunk (few compiled shapes).
        rows = np.minimum(np.arange(_next_pow2(n_chunks) * chunk), p - 1)
        text = self._encode_text(self._detector_params, jnp.asarray(tokens[rows]))
        h, w = self._orig_hw
        results = []
        for start in range(0, p, chunk):
            # A short last chunk is padded with copies of its last prompt (one compiled shape).
            rows = np.minimum(np.arange(start, start + chunk), p - 1)
            det = self._ground(self._detector_params, self._image_out, text, jnp.int32(start),
                               *(jnp.asarray(a[rows]) for a in (cxcywh, lab, mask)))
            scores, boxes_xyxy = np.asarray(det["scores"]), np.asarray(det["pred_boxes_xyxy"])
            for i in range(min(chunk, p - start)):
                keep = np.flatnonzero(scores[i] > threshold)
                n = len(keep)
                if n == 0:
                    masks = np.zeros((0, h, w), bool)
                else:
                    idx = np.zeros(min(_next_pow2(n), scores.shape[1]), np.int32)
                    idx[:n] = keep
                    masks = np.asarray(self._masks(self._detector_params, self._image_out, det, jnp.int32(i),
                                                   jnp.asarray(idx), size=(h, w)))[:n]
                results.append({
                    "masks": masks,
                    "boxes": (boxes_xyxy[i, keep] * np.array([w, h, w, h], np.float32)).astype(np.float32),
                    "scores": scores[i, keep].astype(np.float32),
                })
        return results

    def predict(self, text: Optional[str] = None, boxes=None, box_labels=None, threshold: float = 0.5) -> dict:
        """One prompt: a noun phrase, exemplar boxes ((M, 4) xyxy pixels; box_labels (M,) bool,
        True = positive), or both. Returns masks (N, H, W) bool, boxes (N, 4) xyxy pixels and
        scores (N,) float32 for the queries whose score exceeds `threshold` (0.0 keeps all)."""
        self._require_image()
        if text is not None and not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        has_boxes = boxes is not None and len(boxes) > 0
        if (text is None or not text.strip()) and not has_boxes:
            raise ValueError("empty prompt: give a non-empty text, exemplar boxes, or both")
        if text is None or not text.strip():
            text = VISUAL_PROMPT_TEXT
        return self._run([text], boxes if has_boxes else None, box_labels if has_boxes else None, threshold)[0]

    def predict_batch(self, texts: Sequence[str], threshold: float = 0.5) -> list[dict]:
        """Many text prompts on the cached image encoding: one compiled call per `prompt_chunk`
        prompts (all of them at once on accelerators), then masks for the kept queries."""
        self._require_image()
        if isinstance(texts, str) or len(texts) == 0:
            raise ValueError("texts must be a non-empty list of strings")
        if any((not isinstance(t, str)) or not t.strip() for t in texts):
            raise ValueError("every text prompt must be a non-empty string")
        return self._run(list(texts), None, None, threshold)

    # ------------------------------------------------------------------ instance prompts
    def predict_instance(self, points=None, point_labels=None, box=None, mask_input=None,
                         multimask_output: bool = True) -> dict[str, np.ndarray]:
        """Segments one object per prompt with clicks, a box and / or a previous mask (the official
        `Sam3Image.predict_inst`, equal to it to fp32 rounding).

        One prompt: points (N, 2) (x, y) pixels of the original image with point_labels (N,)
        (1 positive, 0 negative; the official prompt encoder also takes -1 "not a point" and 2 / 3
        box corners), box (4,) [x0, y0, x1, y1] pixels, mask_input (1, 4g, 4g) low-res logits
        from a previous round (`low_res_logits[[k]]`). Returns masks (K, H, W) bool, iou (K,)
        float32 (predicted IoU of each mask) and low_res_logits (K, 4g, 4g) float32 clamped to
        [-32, 32], with K = 3 when multimask_output else 1 (the official dynamic selection).

        B prompts at once (one jitted call): points (B, N, 2) with point_labels (B, N) (the same N
        for every prompt), box (B, 4), mask_input (B, 1, 4g, 4g); outputs gain a leading B axis
        (also for B = 1, where the official code drops it).

        Give points (with labels), a box, a mask, or any mix; a box comes before the clicks as two
        corner points, as in the official code.
        """
        heads = self._require_heads()
        self._require_image("predict_instance")
        pts, labels, bx, mask, batch = self._instance_prompts(points, point_labels, box, mask_input)
        if not isinstance(multimask_output, (bool, np.bool_)):
            raise TypeError(f"multimask_output must be a bool, got {type(multimask_output).__name__}")
        p, lab = instance.prompt_points(pts, labels, bx, self._orig_hw, self.resolution)
        out = self._segment_instances(
            heads, self._inst_features, None if p is None else jnp.asarray(p),
            None if lab is None else jnp.asarray(lab), None if mask is None else jnp.asarray(mask, jnp.float32),
            orig_hw=self._orig_hw, multimask_output=bool(multimask_output),
        )
        res = {k: np.asarray(v) for k, v in out.items()}
        if not batch:
            res = {k: v[0] for k, v in res.items()}
        return res

    def _require_heads(self) -> Any:
        if self._heads is None:
            raise ValueError(self._no_heads_error)
        return self._heads

    @property
    def low_res_size(self) -> int:
        """Side of the low-res mask logits (4g): the shape mask_input takes."""
        return 4 * (self.resolution // int(self.config.vit.patch_size))

    def _instance_prompts(self, points, point_labels, box, mask_input):
        """Checks instance prompts; returns batched (B, ...) numpy arrays (or None) and whether the
        input was batched."""
        h, w = self._orig_hw
        sizes: dict[str, int] = {}  # argument -> batch size, for the batched forms
        singles: list[str] = []

        pts = labels = None
        if points is None and point_labels is not None:
            raise ValueError("point_labels given without points")
        if points is not None:
            if point_labels is None:
                raise ValueError("points given without point_labels (1 = positive click, 0 = negative)")
            pts = _as_float_array(points, "points")
            if pts.ndim not in (2, 3) or pts.shape[-1] != 2:
                raise ValueError(f"points must have shape (N, 2) or (B, N, 2) as (x, y) pixels, got {pts.shape}")
            if pts.shape[-2] == 0:
                raise ValueError("points must hold at least one point (or pass points=None)")
            labels = np.asarray(point_labels)
            if labels.shape != pts.shape[:-1]:
                raise ValueError(f"point_labels must have shape {pts.shape[:-1]} to match points {pts.shape}, "
                                 f"got {labels.shape}")
            check_point_labels(labels, "point_labels")
            labels = labels.astype(np.int32)
            bad = ~((pts[..., 0] >= 0) & (pts[..., 0] <= w) & (pts[..., 1] >= 0) & (pts[..., 1] <= h))
            if bad.any():
                where = tuple(int(i) for i in np.argwhere(bad)[0])
                raise ValueError(f"points {pts[where].tolist()} (at index {where}) lies outside the {w}x{h} image "
                                 f"(x must be in [0, {w}], y in [0, {h}])")
            if pts.ndim == 3:
                sizes["points"] = pts.shape[0]
            else:
                singles.append("points")
                pts, labels = pts[None], labels[None]

        bx = None
        if box is not None:
            bx = _as_float_array(box, "box")
            if bx.shape != (4,) and not (bx.ndim == 2 and bx.shape[1] == 4):
                raise ValueError(f"box must have shape (4,) or (B, 4) as [x0, y0, x1, y1] pixels, got {bx.shape}")
            rows = bx.reshape(-1, 4)
            for i, (x0, y0, x1, y1) in enumerate(rows):
                if x1 < x0 or y1 < y0:
                    raise ValueError(f"box {rows[i].tolist()} has x1 < x0 or y1 < y0 (expected [x0, y0, x1, y1])")
                if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
                    raise ValueError(f"box {rows[i].tolist()} lies outside the {w}x{h} image")
            if bx.ndim == 2:
                sizes["box"] = bx.shape[0]
            else:
                singles.append("box")
                bx = bx[None]

        mask = None
        if mask_input is not None:
            s = self.low_res_size
            mask = _as_float_array(mask_input, "mask_input")
            if mask.shape == (1, s, s):
                singles.append("mask_input")
                mask = mask[None]
            elif mask.ndim == 4 and mask.shape[1:] == (1, s, s):
                sizes["mask_input"] = mask.shape[0]
            else:
                raise ValueError(f"mask_input must have shape (1, {s}, {s}) or (B, 1, {s}, {s}) (low-res logits "
                                 f"of a previous round), got {mask.shape}")
            if mask.shape[0] == 0:
                raise ValueError("mask_input holds no mask")

        if pts is None and bx is None and mask is None:
            raise ValueError("empty prompt: give points with point_labels, a box, a mask_input, or a mix")
        if sizes and singles:
            raise ValueError(f"{singles[0]} is a single prompt but {next(iter(sizes))} is batched: give every "
                             "prompt part in the same form (all batched with one leading B, or none)")
        if len(set(sizes.values())) > 1:
            raise ValueError("batched prompt parts disagree on the batch size: "
                             + ", ".join(f"{k} {v}" for k, v in sizes.items()))
        if sizes and next(iter(sizes.values())) == 0:
            raise ValueError(f"{next(iter(sizes))} holds an empty batch")
        return pts, labels, bx, mask, bool(sizes)


def _as_float_array(value: Any, argname: str) -> np.ndarray:
    try:
        a = np.asarray(value)
    except Exception as e:  # ragged nested lists
        raise ValueError(f"{argname} must be a numeric array: {e}") from None
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{argname} must be a numeric array, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{argname} contains NaN or infinite values")
    return a


def _upsample_binarise(mask_logits: jax.Array, size: tuple[int, int]) -> jax.Array:
    """(K, h, w) mask logits -> (K, H, W) bool: torch bilinear to `size`, then sigmoid > 0.5."""
    up = resize_bilinear(mask_logits.astype(jnp.float32)[..., None], size)[..., 0]
    return jax.nn.sigmoid(up) > 0.5
