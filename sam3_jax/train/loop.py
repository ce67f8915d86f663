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

from sam3_jax.model.init import official_init
from sam3_jax.model.sam3_image import Sam3Image
from sam3_jax.parallel import checkpoint as ckpt
from sam3_jax.parallel.distributed import is_main_process
from sam3_jax.parallel.mesh import batch_sharding, logical_rules, make_mesh
from sam3_jax.parallel.state import (
    abstract_params_and_shardings,
    abstract_train_state,
    init_params,
    init_shardings,
    init_train_state,
    place_params,
    train_state_shardings,
)
from sam3_jax.train.evaluator import Evaluator
from sam3_jax.train.inputs import (
    TARGET_PREFIX,
    flatten_batch,
    global_batch,
    input_specs,
    make_sources,
    pipeline_config,
)
from sam3_jax.train.losses import LossConfig, compute_num_boxes, sam3_loss
from sam3_jax.train.optim import make_optimizer
from sam3_jax.train.step import make_train_step

if TYPE_CHECKING:
    import ml_collections


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
    it = make_iterator(train_src, pipeline_config(cfg, train=True, batch=cfg.data.train_batch // n_proc),
                       process_index=jax.process_index(), process_count=n_proc)
    it_start = it.get_state()
    first = flatten_batch(next(it))  # only for the shapes: the iterator is rewound to it_start below

    specs = input_specs(first)
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
            gbatch = global_batch(batch, b_sh)
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
