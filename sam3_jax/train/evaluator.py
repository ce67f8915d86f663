"""Evaluation during training: `Evaluator` runs the model over fixed validation sources (sharded over
processes, predictions gathered), `score_rows` scores its rows with the SA-Co metrics (cgF1, IL_MCC,
pmF1; official scorer semantics) and `save_pictures` draws predictions on validation images.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sam3_jax.parallel.distributed import is_main_process
from sam3_jax.parallel.mesh import activate, batch_sharding
from sam3_jax.train.inputs import flatten_batch, global_batch, pipeline_config


class Evaluator:
    """cgF1 (+ IL_MCC, pmF1) of the model on fixed validation sources, at the source image size.

    Multi-host: every process reads its own shard of each source (padded to one length), the forward
    runs on the global batch, and predictions plus the GT needed for scoring are gathered to every
    process in global row order; so all processes return the same metrics. Pictures are drawn by
    process 0 from its own rows."""

    def __init__(self, model, cfg, mesh, rules, p_sh, sources, batch: int = 16):
        from sam3_jax.train.step import MODEL_INPUTS

        self.model, self.cfg, self.mesh, self.rules, self.sources = model, cfg, mesh, rules, sources
        self.inputs = MODEL_INPUTS
        n = jax.process_count()
        shards = int(np.prod([mesh.shape[a] for a in batch_sharding(mesh, 1, rules).spec[0] or ()]))
        self.batch = batch  # per process; the global batch must split evenly over the batch shards
        while (self.batch * n) % shards:
            self.batch += 1

        def fwd(params, images, tokens, boxes, box_labels, box_mask):
            out = model.apply({"params": params}, images, tokens, boxes, box_labels, box_mask)
            scores = jax.nn.sigmoid(out["pred_logits"][..., 0]) * jax.nn.sigmoid(out["presence_logit_dec"])
            return scores, out["pred_boxes_xyxy"], out["pred_masks"]

        self._fwd = jax.jit(fwd)

    def _batch_sharding(self, x) -> Any:
        return batch_sharding(self.mesh, np.ndim(x), self.rules)

    def _forward(self, params, inputs: dict):
        """(scores, boxes, mask logits) of a process-local batch of model inputs, on the global batch."""
        g = global_batch(inputs, {name: self._batch_sharding(v) for name, v in inputs.items()})
        with activate(self.mesh, self.rules):
            return self._fwd(params, *(g[name] for name in self.inputs))

    def predict(self, params, src) -> tuple[list, list]:
        """(rows over the whole source in global order, this process's own rows); a row is
        (batch, index, scores (Q,), boxes (Q, 4) xyxy normalised, mask logits (Q, h, w))."""
        from jax.experimental import multihost_utils

        from sam3_jax.data.pipeline import close_iterator, make_iterator

        n, pid = jax.process_count(), jax.process_index()
        it = make_iterator(src, pipeline_config(self.cfg, train=False, batch=self.batch),
                           process_index=pid, process_count=n)
        rows, local = [], []
        for b in it:
            flat = flatten_batch(b)
            inputs = {name: flat[name] for name in self.inputs}
            if n == 1:
                scores, boxes, masks = (np.asarray(x) for x in jax.device_get(self._forward(params, inputs)))
                mine = [(b, i, scores[i], boxes[i], masks[i]) for i in np.flatnonzero(np.asarray(b["row_valid"]))]
                rows += mine
                local += mine
                continue
            # Multi-host: the GT the scoring reads rides along as global arrays, so that one gather
            # puts predictions and GT in the same global row order on every process.
            k = len(b["row_valid"])
            host = {"masks": b["masks"], "valid": b["valid"], "row_valid": b["row_valid"],
                    "pair_id": np.asarray(b["pair_id"], np.int32), "origin": pid * k + np.arange(k, dtype=np.int32)}
            g = global_batch(host, {name: self._batch_sharding(v) for name, v in host.items()})
            out, g = multihost_utils.process_allgather((self._forward(params, inputs), g), tiled=True)
            g["text"] = np.asarray([f"pair {int(p)}" for p in g["pair_id"]])
            scores, boxes, masks = (np.asarray(x) for x in out)
            rows += [(g, i, scores[i], boxes[i], masks[i]) for i in np.flatnonzero(np.asarray(g["row_valid"]))]
            where = {int(o): j for j, o in enumerate(np.asarray(g["origin"]))}
            local += [(b, i, scores[where[pid * k + i]], boxes[where[pid * k + i]], masks[where[pid * k + i]])
                      for i in np.flatnonzero(np.asarray(b["row_valid"]))]
        close_iterator(it)
        return rows, local

    def __call__(self, params, pictures: int = 0, picture_dir: Optional[str] = None) -> dict:
        out = {}
        for name, src in zip(("val", "held_out"), self.sources):
            if src is None:
                continue
            rows, local = self.predict(params, src)
            metrics = score_rows(rows)
            out.update({f"{name}/{k}": v for k, v in metrics.items()})
            if pictures and picture_dir and name == "val" and is_main_process():
                save_pictures(local[:pictures], picture_dir)
        return out


def _upsample_logits(masks: np.ndarray, size: int) -> np.ndarray:
    from sam3_jax.layers.resize import resize_bilinear

    return np.asarray(resize_bilinear(jnp.asarray(masks)[..., None], (size, size)))[..., 0]


def score_rows(rows) -> dict:
    """SA-Co metrics of (batch, row, scores, boxes, mask logits) tuples (official scorer semantics), in the
    frame of the batch's GT masks (the source image squashed to the evaluation mask size)."""
    from sam3_jax.eval import evaluate_image
    from sam3_jax.eval.image_inputs import validate_image_gt, validate_image_predictions
    from sam3_jax.eval.prediction_writers import image_prediction_records
    from sam3_jax.formats.masks import encode_mask

    images, anns, preds = [], [], []
    for pid, (b, i, scores, boxes, masks) in enumerate(rows):
        h, w = b["masks"].shape[-2:]
        images.append({"id": pid, "height": h, "width": w, "file_name": f"{pid}.png", "text_input": str(b["text"][i]),
                       "is_instance_exhaustive": 1})
        for m in np.flatnonzero(b["valid"][i]):
            mk = np.asarray(b["masks"][i][m], bool)
            ys, xs = np.nonzero(mk)
            if len(xs) == 0:
                continue
            bbox = [xs.min() / w, ys.min() / h, (xs.max() + 1 - xs.min()) / w, (ys.max() + 1 - ys.min()) / h]
            anns.append({"id": len(anns) + 1, "image_id": pid, "category_id": 1, "iscrowd": 0,
                         "segmentation": encode_mask(mk), "bbox": [float(v) for v in bbox],
                         "area": float(mk.sum()) / (h * w)})
        keep = np.flatnonzero(scores >= 0.5)
        if len(keep):
            up = _upsample_logits(masks[keep], h) > 0
            preds += image_prediction_records(pid, up, boxes[keep] * np.array([w, h, w, h]), scores[keep], h, w)
    gt = validate_image_gt({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]},
                           "validation")
    res = evaluate_image([gt], validate_image_predictions(preds, gt, "validation predictions"), "segm")["metrics"]
    # cgF1 in percent (100 x pmF1 x IL_MCC, the paper's convention); IL_MCC and pmF1 as fractions.
    pick = {"cgF1": ("cgF1", 100), "cgF1@0.5": ("cgF1@0.5", 100), "IL_MCC": ("IL_MCC", 1),
            "pmF1": ("positive_micro_F1", 1)}
    return {k: float(res[f"cgF1_eval_segm_{name}"]) * scale for k, (name, scale) in pick.items()}


def save_pictures(rows, directory: str, min_shown: int = 3) -> None:
    """Predictions drawn on validation images: every query scoring >= 0.5, or at least the top
    `min_shown` (so an undertrained model still shows what it finds), with the phrase on top."""
    from PIL import Image, ImageDraw

    from sam3_jax.predict.overlay import overlay

    os.makedirs(directory, exist_ok=True)
    for n, (b, i, scores, boxes, masks) in enumerate(rows):
        side = 4 * int(b["masks"].shape[-1])
        src = np.asarray(Image.fromarray(np.asarray(b["image"][i])).resize((side, side), Image.BILINEAR))
        order = np.argsort(-scores)
        keep = order[: max(int((scores >= 0.5).sum()), min_shown)]
        up = _upsample_logits(masks[keep], side) > 0
        pic = overlay(src, up, boxes[keep] * side, scores[keep])
        canvas = Image.new("RGB", (side, side + 16), (255, 255, 255))
        canvas.paste(pic, (0, 16))
        ImageDraw.Draw(canvas).text((2, 2), f'"{b["text"][i]}"  (>= 0.5: {int((scores >= 0.5).sum())})', fill=(0, 0, 0))
        canvas.save(os.path.join(directory, f"val_{n}_{str(b['text'][i]).replace(' ', '_')}.png"))
