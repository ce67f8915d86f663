"""`Sam3ImagePredictor`: promptable concept segmentation on one image, many prompts.

    predictor = Sam3ImagePredictor.from_checkpoint("converted/")
    predictor.set_image(image)                      # HxWx3 uint8 array or PIL image; encodes once
    out = predictor.predict(text="a dog")           # masks (N,H,W) bool, boxes (N,4) xyxy px, scores (N,)
    out = predictor.predict(boxes=[[x0, y0, x1, y1]], box_labels=[True])   # exemplar boxes only
    outs = predictor.predict_batch(texts=["a dog", "a cat"])               # one jitted call

Post-processing follows the official `Sam3Processor`: score = sigmoid(logit) * sigmoid(presence),
keep score > threshold (no NMS), boxes cxcywh -> xyxy scaled to the original size, mask logits
resized bilinearly (torch semantics) to the original size, then sigmoid > 0.5. Results are in
query order. Compiled functions are cached per input shape: prompts are padded to fixed sizes
(box count to a multiple of 4, kept-mask count to a power of two), so repeated calls reuse them.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sam3_jax.formats.image import preprocess, to_uint8_rgb
from sam3_jax.layers.resize import resize_bilinear
from sam3_jax.model.tokenizer import ClipTokenizer

VISUAL_PROMPT_TEXT = "visual"  # what the official processor encodes when only boxes are given


def _round_up(n: int, k: int) -> int:
    return max(k, -(-n // k) * k)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class Sam3ImagePredictor:
    def __init__(self, params: Any, model_config, *, tokenizer: Optional[ClipTokenizer] = None):
        from sam3_jax.model.sam3_image import Sam3Image

        self.config = model_config
        self.model = Sam3Image(model_config)
        self.params = params
        self.tokenizer = tokenizer or ClipTokenizer()
        self.resolution = int(model_config.image_size)
        self.context_length = int(model_config.text.context_length)
        self._image_out = None
        self._orig_hw: Optional[tuple[int, int]] = None
        self._image = None
        model = self.model

        @jax.jit
        def encode_image(params, images):
            return model.apply({"params": params}, images, method=type(model).forward_image_for_grounding)

        @jax.jit
        def ground(params, image_out, tokens, boxes, box_labels, box_mask):
            out = model.apply(
                {"params": params}, image_out, tokens, boxes, box_labels, box_mask,
                method=type(model).forward_prompts,
            )
            scores = jax.nn.sigmoid(out["pred_logits"][..., 0]) * jax.nn.sigmoid(out["presence_logit_dec"])
            return {"scores": scores, "pred_boxes_xyxy": out["pred_boxes_xyxy"], "pred_masks": out["pred_masks"]}

        self._encode_image = encode_image
        self._ground = ground

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(cls, ckpt_dir: str) -> "Sam3ImagePredictor":
        """Loads a directory written by `convert_weights.py` (or a training checkpoint export)."""
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
        target = image_model_target_shapes(cfg, dtype=jnp.dtype(manifest.get("dtype", "float32")))
        params, _ = load_converted(ckpt_dir, target)
        return cls(params, cfg)

    # ------------------------------------------------------------------ image
    def set_image(self, image: Any) -> None:
        """Encodes the image once (trunk + necks); later prompts reuse the cached features."""
        img = to_uint8_rgb(image)
        self._orig_hw = (int(img.shape[0]), int(img.shape[1]))
        x = preprocess(img, self.resolution)[None]
        self._image_out = self._encode_image(self.params, jnp.asarray(x))
        self._image = img

    def _require_image(self) -> None:
        if self._image_out is None:
            raise RuntimeError("call set_image(image) before predict()")

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

    def _postprocess(self, scores, boxes_xyxy, mask_logits, threshold: float) -> dict[str, np.ndarray]:
        h, w = self._orig_hw
        scores = np.asarray(scores)
        keep = np.flatnonzero(scores > threshold)
        out_boxes = np.asarray(boxes_xyxy)[keep] * np.array([w, h, w, h], np.float32)
        n = len(keep)
        if n == 0:
            masks = np.zeros((0, h, w), bool)
        else:
            bucket = min(_next_pow2(n), mask_logits.shape[0])
            idx = np.zeros(bucket, np.int32)
            idx[:n] = keep
            masks = np.asarray(_resize_masks(mask_logits, jnp.asarray(idx), (h, w)))[:n]
        return {"masks": masks, "boxes": out_boxes.astype(np.float32), "scores": scores[keep].astype(np.float32)}

    def _run(self, texts: Sequence[str], boxes, box_labels) -> dict[str, Any]:
        self._require_image()
        tokens = self._tokens(texts)
        cxcywh, lab, mask = self._boxes(boxes, box_labels)
        p = len(texts)
        cxcywh, lab, mask = (np.repeat(a, p, axis=0) for a in (cxcywh, lab, mask))
        return self._ground(self.params, self._image_out, jnp.asarray(tokens), jnp.asarray(cxcywh),
                            jnp.asarray(lab), jnp.asarray(mask))

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
        out = self._run([text], boxes if has_boxes else None, box_labels if has_boxes else None)
        return self._postprocess(out["scores"][0], out["pred_boxes_xyxy"][0], out["pred_masks"][0], threshold)

    def predict_batch(self, texts: Sequence[str], threshold: float = 0.5) -> list[dict]:
        """Many text prompts on the cached image encoding, in one jitted call."""
        self._require_image()
        if isinstance(texts, str) or len(texts) == 0:
            raise ValueError("texts must be a non-empty list of strings")
        if any((not isinstance(t, str)) or not t.strip() for t in texts):
            raise ValueError("every text prompt must be a non-empty string")
        out = self._run(list(texts), None, None)
        return [
            self._postprocess(out["scores"][i], out["pred_boxes_xyxy"][i], out["pred_masks"][i], threshold)
            for i in range(len(texts))
        ]


@functools.partial(jax.jit, static_argnums=(2,))
def _resize_masks(mask_logits: jax.Array, idx: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Selected (Q, h, w) mask logits -> (len(idx), H, W) bool, torch bilinear then sigmoid > 0.5."""
    sel = jnp.take(mask_logits, idx, axis=0)[..., None]  # (n, h, w, 1)
    up = resize_bilinear(sel, size)[..., 0]
    return jax.nn.sigmoid(up) > 0.5
