"""The training loop behind `train.py`.

    summary = train(cfg, workdir, init_from=None)

* data: the Grain pipeline (`sam3_jax.data.pipeline`) over the configured source, sharded per process;
* model: `Sam3Image`, params and AdamW state created directly in their shardings on the config's mesh,
  drawn as the official PyTorch modules draw them (`model.init.official_init`; `train.init=flax`
  keeps Flax's defaults), or the params of a converted checkpoint (`--init_from`);
* step: one jitted sharded step (`train.step.make_train_step`) with the SAM 3 matcher and losses;
* checkpoints: Orbax `CheckpointManager` (async, keep N) holding the train state plus, in the same
  step directory, the data iterator state and the loop position; a restart with the same command
  resumes from the latest checkpoint (restored into abstract targets: no init is drawn or loaded
  first) and replays exactly the same data and updates;
* evaluation: cgF1 / IL_MCC / pmF1 on a fixed validation set (and, for the synthetic source, on
  held-out colour-shape combinations); each process reads its own shard, predictions are gathered;
* logging (process 0 only): progress bar, `metrics.jsonl` and TensorBoard events, overlay pictures.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sam3_jax.model.init import official_init
from sam3_jax.model.sam3_image import Sam3Image
from sam3_jax.parallel import checkpoint as ckpt
from sam3_jax.parallel.distributed import is_main_process
from sam3_jax.parallel.mesh import activate, batch_sharding, logical_rules, make_mesh
from sam3_jax.parallel.state import (
    abstract_params_and_shardings,
    abstract_train_state,
    init_params,
    init_shardings,
    init_train_state,
    place_params,
    train_state_shardings,
)
from sam3_jax.train.losses import LossConfig, compute_num_boxes, sam3_loss
from sam3_jax.train.optim import make_optimizer
from sam3_jax.train.step import make_train_step

if TYPE_CHECKING:
    import ml_collections

TARGET_PREFIX = "tgt_"


SOURCES = ("synthetic", "coco", "saco", "tfds")


class Head:
    """The first `n` examples of a source (a fixed evaluation subset); picklable like its source."""

    def __init__(self, source, n: Optional[int]):
        self.source, self.n = source, len(source) if not n else min(int(n), len(source))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        if not 0 <= int(index) < self.n:
            raise IndexError(f"index {index} out of range for the first {self.n} of {self.source!r}")
        return self.source[index]

    def __repr__(self) -> str:
        return f"Head({self.source!r}, {self.n})"


def _need(d, *names: str) -> None:
    missing = [n for n in names if not d.get(n)]
    if missing:
        raise ValueError(f"data.source={d.source!r} needs " + ", ".join(f"--config.data.{n}" for n in missing))


def make_sources(cfg) -> tuple[Any, Any, Any]:
    """(train, validation, held-out) sources of the configured kind; held-out is None where the data has
    no held-out concepts (the synthetic source's held-out colour-shape combinations).

    data.source:
      synthetic: the procedural source (`data.synthetic` holds further SyntheticSource options);
      coco:      COCO instances JSON + image folder: data.train_annotations / train_images,
                 data.val_annotations / val_images (negatives_per_image, p_exemplar optional);
      saco:      SA-Co/Gold-style JSON + image folder, the same four fields;
      tfds:      ArrayRecord splits built by sam3_jax.data.tfds_builders: data.tfds_dir (the builder's
                 data_dir with dataset_info.json), data.train_split, data.val_split.
    Validation keeps its first data.eval_examples pairs. Bad records follow data.on_bad_data.
    """
    d = cfg.data
    if d.source not in SOURCES:
        raise ValueError(f"unknown data.source {d.source!r}; expected one of {SOURCES}")
    pad = dict(max_instances=d.max_instances, max_prompt_boxes=d.max_exemplars)
    if d.source == "synthetic":
        from sam3_jax.data.synthetic import SyntheticSource

        kw = dict(seed=d.seed, canvas=d.canvas, **pad)
        extra = d.get("synthetic", None) or {}  # further SyntheticSource options (sampling rates, objects)
        kw.update(extra.to_dict() if hasattr(extra, "to_dict") else dict(extra))
        train = SyntheticSource("train", **kw)
        val = SyntheticSource("val", num_examples=d.eval_examples, held_out_rate=0.0, **kw)
        held = SyntheticSource("test", num_examples=d.eval_examples, held_out_rate=1.0, **kw)
        return train, val, held
    if d.source in ("coco", "saco"):
        from sam3_jax.data.coco import CocoSource, SacoGoldSource

        _need(d, "train_annotations", "train_images", "val_annotations", "val_images")
        kw = dict(seed=d.seed, on_bad_data=d.get("on_bad_data", "raise"), p_exemplar=d.get("p_exemplar", 0.0), **pad)
        if d.source == "coco":
            cls = CocoSource
            kw["negatives_per_image"] = d.get("negatives_per_image", 2)
        else:
            cls = SacoGoldSource
        train = cls(d.train_annotations, d.train_images, **kw)
        val = cls(d.val_annotations, d.val_images, **kw)
    else:
        from sam3_jax.data.tfds_builders import TfdsPairSource

        _need(d, "tfds_dir", "train_split", "val_split")
        train = TfdsPairSource(d.tfds_dir, d.train_split, **pad)
        val = TfdsPairSource(d.tfds_dir, d.val_split, **pad)
    if len(train) == 0:
        raise ValueError(f"the training source {train!r} holds no examples")
    return train, Head(val, d.eval_examples), None


def eval_mask_size(cfg) -> int:
    """Side of the square frame evaluation happens in: the synthetic canvas (its native size), else
    data.eval_mask_size (default 4 x the patch grid, the mask head's own resolution)."""
    if cfg.data.source == "synthetic":
        return cfg.data.canvas
    return int(cfg.data.get("eval_mask_size", None) or mask_size(cfg.model))


def mask_size(model_cfg) -> int:
    return 4 * (model_cfg.image_size // model_cfg.vit.patch_size)


def _pipeline_cfg(cfg, *, train: bool, batch: int):
    from sam3_jax.data.pipeline import PipelineConfig

    m = cfg.model
    if train:
        return PipelineConfig(resolution=m.image_size, mask_size=mask_size(m), batch_size=batch, seed=cfg.data.seed,
                              worker_count=cfg.data.num_workers, context_length=m.text.context_length)
    return PipelineConfig.for_eval(m.image_size, batch, mask_size=eval_mask_size(cfg),
                                   context_length=m.text.context_length)


def flatten_batch(batch: dict) -> dict:
    """Pipeline batch -> one dict: the model inputs plus the loss targets under `tgt_` keys."""
    from sam3_jax.data.pipeline import to_model_batch

    inputs, targets = to_model_batch(batch)
    return {**inputs, **{TARGET_PREFIX + k: v for k, v in targets.items()}}


def loss_config(loss_cfg) -> LossConfig:
    """The `loss` ConfigDict -> LossConfig; any LossConfig field may be set, unknown names are refused."""
    fields = {f.name for f in dataclasses.fields(LossConfig)}
    given = dict(loss_cfg.items()) if loss_cfg is not None else {}
    unknown = sorted(set(given) - fields)
    if unknown:
        raise ValueError(f"unknown loss option(s) {unknown}; LossConfig has {sorted(fields)}")
    if given.get("pad_n_queries") == 0:
        given["pad_n_queries"] = None
    return LossConfig(**given)


def loss_config_dict(**overrides) -> "ml_collections.ConfigDict":
    """Every LossConfig field with its default (so any can be overridden from the command line;
    `pad_n_queries=0` stands for None, the plain mean over queries)."""
    import ml_collections

    loss_config(overrides)  # refuses unknown names
    return ml_collections.ConfigDict({**dataclasses.asdict(LossConfig()), **overrides})


def make_loss_fn(loss_cfg) -> Callable:
    config = loss_config(loss_cfg)

    def loss_fn(outputs, batch):
        targets = {k[len(TARGET_PREFIX):]: v for k, v in batch.items() if k.startswith(TARGET_PREFIX)}
        num_boxes = compute_num_boxes(targets["valid"])
        total, terms = sam3_loss(outputs, targets, num_boxes, config)
        keep = ("loss_ce", "presence_loss", "loss_bbox", "loss_giou", "loss_mask", "loss_dice", "loss_semantic_seg",
                "loss_semantic_dice")
        out = {k: terms[k] for k in keep if k in terms}
        out.update({k: terms[k] for k in ("loss_ce_o2m", "loss_bbox_o2m", "loss_giou_o2m", "loss_mask_o2m") if k in terms})
        return total, out

    return loss_fn


def _input_specs(batch: dict) -> list:
    from sam3_jax.train.step import MODEL_INPUTS

    return [jax.ShapeDtypeStruct(batch[k].shape, batch[k].dtype) for k in MODEL_INPUTS]


class _Logger:
    """metrics.jsonl plus TensorBoard event files (written without TensorFlow), process 0 only."""

    def __init__(self, workdir: str, enabled: bool):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if enabled:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            self._tb = EventFileWriter(os.path.join(workdir, "tensorboard"))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        from tensorboard.compat.proto import event_pb2, summary_pb2

        flat = {}
        for k, v in record.items():
            if isinstance(v, dict):
                flat.update({f"{k}/{kk}": vv for kk, vv in v.items()})
            elif k not in ("step", "time"):
                flat[k] = v
        values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in flat.items()
                  if isinstance(v, (int, float))]
        if values:
            self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=int(record["step"]),
                                               summary=summary_pb2.Summary(value=values)))
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def train(cfg, workdir: str, *, init_from: Optional[str] = None, log: Callable[[str], None] = print,
          progress: bool = True) -> dict:
    from tqdm import tqdm

    from sam3_jax.data.pipeline import close_iterator, make_iterator

    init = cfg.train.get("init", "official")
    if init not in ("official", "flax"):
        raise ValueError(f"train.init must be 'flax' or 'official', got {init!r}")
    os.makedirs(workdir, exist_ok=True)
    main = is_main_process()
    if cfg.get("matmul_precision"):
        jax.config.update("jax_default_matmul_precision", cfg.matmul_precision)
    mesh = make_mesh(cfg.mesh)
    rules = logical_rules(cfg)
    model = Sam3Image(cfg.model)
    t = cfg.train
    n_proc = jax.process_count()
    if cfg.data.train_batch % n_proc:
        raise ValueError(f"train_batch {cfg.data.train_batch} is not divisible by {n_proc} processes")
    train_src, val_src, held_src = make_sources(cfg)
    it = make_iterator(train_src, _pipeline_cfg(cfg, train=True, batch=cfg.data.train_batch // n_proc),
                       process_index=jax.process_index(), process_count=n_proc)
    it_start = it.get_state()
    first = flatten_batch(next(it))  # only for the shapes: the iterator is rewound to it_start below

    specs = _input_specs(first)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    resume = ckpt.latest_step(ckpt_dir) is not None
    if resume:  # the checkpoint replaces every param and the optimizer state: draw and load nothing
        params, p_sh = abstract_params_and_shardings(model, specs, mesh, rules)
    elif init_from:
        p_sh = init_shardings(model, specs, mesh, rules)
        params = _load_init(init_from, cfg, p_sh)
    else:  # from scratch: "official" re-draws every param as the official modules draw it, in the same jit
        redraw = (lambda p: official_init(p, jax.random.key(cfg.seed + 1))) if init == "official" else None
        params, p_sh = init_params(model, jax.random.key(cfg.seed), specs, mesh, rules, transform=redraw)
    tx = make_optimizer(params, cfg.optim, t.steps)  # reads only the params' paths and shapes
    if resume:
        s_sh = train_state_shardings(tx, params, p_sh, mesh)
    else:
        state, s_sh = init_train_state(params, p_sh, tx, mesh)
    b_sh = {k: batch_sharding(mesh, v.ndim, rules) for k, v in first.items()}
    step_fn = make_train_step(model, tx, make_loss_fn(cfg.loss), mesh, rules, s_sh, b_sh, dac=bool(t.get("dac", False)))

    mngr = ckpt.manager(ckpt_dir, max_to_keep=t.keep)
    start = 0
    data_state = None
    if resume:
        state, meta = ckpt.restore(mngr, abstract_train_state(params, tx, s_sh), with_meta=True)
        start, data_state = int(meta["step"]), meta["data_state"]
        log(f"resumed from {ckpt_dir}" + (" (--init_from not read)" if init_from else "") + f" at step {start}")
    it.set_state(data_state if data_state is not None else it_start)

    logger = _Logger(workdir, main)
    evaluator = Evaluator(model, cfg, mesh, rules, p_sh, (val_src, held_src))
    t0 = time.time()
    step = start
    bar = tqdm(total=t.steps, initial=start, disable=not (progress and main), unit="step")
    last: dict = {}
    try:
        while step < t.steps:
            batch = flatten_batch(next(it))
            gbatch = _global_batch(batch, b_sh)
            state, metrics = step_fn(state, gbatch)
            step += 1
            bar.update(1)
            if step % t.log_every == 0 or step == t.steps:
                last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                bar.set_postfix(loss=f"{last['loss']:.3f}")
                logger.write({"step": step, "time": round(time.time() - t0, 2), **last})
            if step % t.checkpoint_every == 0 or step == t.steps:
                ckpt.save(mngr, step, state, extra={"step": step, "data_state": it.get_state()})
            if t.eval_every and step % t.eval_every == 0 and step < t.steps:
                res = evaluator(state["params"])
                logger.write({"step": step, "eval": res})
                log(f"step {step}: " + ", ".join(f"{k} {v:.2f}" for k, v in res.items() if "cgF1" in k))
            if t.max_minutes and (time.time() - t0) / 60 > t.max_minutes and step < t.steps:
                if step % t.checkpoint_every:  # else this step was saved just above
                    ckpt.save(mngr, step, state, extra={"step": step, "data_state": it.get_state()})
                log(f"time budget of {t.max_minutes} min reached at step {step}; checkpoint saved")
                break
    finally:
        bar.close()
        mngr.wait_until_finished()
        close_iterator(it)
    res = evaluator(state["params"], pictures=t.pictures, picture_dir=os.path.join(workdir, "pictures"))
    summary = {"step": step, "minutes": round((time.time() - t0) / 60, 2), "last": last, "eval": res}
    logger.write({"step": step, "final_eval": res})
    logger.close()
    if main:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    mngr.close()
    return summary


def _global_batch(batch: dict, shardings: dict) -> dict:
    if jax.process_count() == 1:
        return {k: jax.device_put(v, shardings[k]) for k, v in batch.items()}
    return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in batch.items()}


def _load_init(init_from: str, cfg, p_sh) -> Any:
    """Params of a converted checkpoint (convert_weights.py), checked against the model config."""
    import ml_collections

    from sam3_jax.convert.checkpoint import load_converted, read_manifest
    from sam3_jax.model.sam3_image import image_model_target_shapes

    manifest = read_manifest(init_from)
    target = image_model_target_shapes(cfg.model)
    stored = image_model_target_shapes(ml_collections.ConfigDict(manifest["model_config"]))
    shapes = lambda t: jax.tree_util.tree_map(lambda x: tuple(x.shape), t)  # noqa: E731
    if shapes(stored) != shapes(target):
        raise ValueError(
            f"{init_from} holds a {manifest['model_config'].get('variant')!r} model whose params do not fit this "
            f"model config ({cfg.model.variant!r}); convert the checkpoint with the training config"
        )
    params, _ = load_converted(init_from, target)
    return place_params(jax.device_get(params), p_sh)


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
        g = _global_batch(inputs, {name: self._batch_sharding(v) for name, v in inputs.items()})
        with activate(self.mesh, self.rules):
            return self._fwd(params, *(g[name] for name in self.inputs))

    def predict(self, params, src) -> tuple[list, list]:
        """(rows over the whole source in global order, this process's own rows); a row is
        (batch, index, scores (Q,), boxes (Q, 4) xyxy normalised, mask logits (Q, h, w))."""
        from jax.experimental import multihost_utils

        from sam3_jax.data.pipeline import close_iterator, make_iterator

        n, pid = jax.process_count(), jax.process_index()
        it = make_iterator(src, _pipeline_cfg(self.cfg, train=False, batch=self.batch),
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
            g = _global_batch(host, {name: self._batch_sharding(v) for name, v in host.items()})
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
    from sam3_jax.eval.io import encode_mask, image_prediction_records, validate_image_gt, validate_image_predictions

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

    from sam3_jax.predict.masks import overlay

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
