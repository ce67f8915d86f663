"""Stage-by-stage comparison of sam3_jax against the official model (see `python -m sam3_jax.parity`)."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sam3_jax.parity.stages import StageResult, allowed_error, compare  # noqa: F401 (re-exported)

DEFAULT_TEXTS = ("a cat", "the astronaut's white space suit, with an American flag!")


def sample_images(image_size: int, batch: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Real photos (scikit-image's bundled astronaut / chelsea / coffee) preprocessed exactly like the
    official processor (square squash with torchvision's uint8 resize, (x/255 - 0.5) / 0.5). Seeded
    noise images are used only if scikit-image is not installed."""
    from sam3_jax.formats.image import preprocess

    try:
        import skimage.data as sk

        pool = [(f"skimage.data.{n}", getattr(sk, n)()) for n in ("astronaut", "chelsea", "coffee")]
    except ImportError:
        rng = np.random.default_rng(seed)
        pool = [(f"noise{i}", rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)) for i in range(3)]
    picked = [pool[(seed + i) % len(pool)] for i in range(batch)]
    x = np.stack([preprocess(img, image_size) for _, img in picked])
    return x, [name for name, _ in picked]


DETECTOR_OUTPUTS = (
    "encoder_hidden_states", "queries", "pred_logits", "pred_boxes", "pred_boxes_xyxy",
    "presence_logit_dec", "pred_masks", "semantic_seg",
)


def sample_box_prompts(batch: int, seed: int, max_boxes: int = 3) -> dict[str, np.ndarray]:
    """Seeded exemplar boxes (normalised cxcywh) with mixed positive / negative labels and a
    different number of valid (right-padded) boxes per batch element (at least one)."""
    rng = np.random.default_rng(seed + 101)
    boxes = np.zeros((batch, max_boxes, 4), np.float32)
    labels = np.zeros((batch, max_boxes), bool)
    mask = np.ones((batch, max_boxes), bool)
    for i in range(batch):
        n = max_boxes - (i % max_boxes)
        wh = rng.uniform(0.05, 0.5, (n, 2))
        c = rng.uniform(wh / 2, 1 - wh / 2)
        boxes[i, :n] = np.concatenate([c, wh], axis=1)
        labels[i, :n] = np.arange(n) % 2 == 0  # first positive, then alternating negative
        mask[i, :n] = False
    return {"boxes": boxes, "box_labels": labels, "box_mask": mask}


def prompt_sets(texts: Sequence[str], batch: int, seed: int) -> dict[str, dict[str, Any]]:
    """The three prompt kinds of the parity report: text only, boxes only (the official processor
    encodes the text "visual" then), and text + boxes (positive and negative exemplars)."""
    boxes = sample_box_prompts(batch, seed)
    return {
        "text": {"texts": list(texts)},
        "boxes": {"texts": ["visual"] * batch, **boxes},
        "text+boxes": {"texts": list(texts), **boxes},
    }


def _model_fns(cfg):
    from sam3_jax.model.sam3_image import Sam3Image

    model = Sam3Image(cfg)

    @jax.jit
    def image_fn(params, images):
        return model.apply({"params": params}, images, method=Sam3Image.forward_image)

    @jax.jit
    def text_fn(params, tokens):
        return model.apply({"params": params}, tokens, method=Sam3Image.forward_text)

    @jax.jit
    def ground_fn(params, image_out, tokens, boxes, box_labels, box_mask):
        out = model.apply({"params": params}, image_out, tokens, boxes, box_labels, box_mask,
                          method=Sam3Image.forward_prompts)
        return {k: out[k] for k in DETECTOR_OUTPUTS}

    return image_fn, text_fn, ground_fn


def load_official_image_model(cfg, checkpoint: str, *, with_tracker: bool = False):
    """The official detector at `cfg`'s sizes with the weights of an official checkpoint file; with
    `with_tracker`, built with instance interactivity and the checkpoint's tracker loaded into it
    (`tracker.*` or `inst_interactive_predictor.model.*`)."""
    import torch

    from sam3_jax.convert import load_state_dict
    from sam3_jax.convert.convert import TRACKER_SOURCES
    from sam3_jax.parity import oracle

    state = load_state_dict(checkpoint)
    model = oracle.build_image_model(cfg, enable_inst_interactivity=with_tracker)
    sub = {}
    for k, v in state.items():
        k = k[len("detector."):] if k.startswith("detector.") else k
        src = next((p for p in TRACKER_SOURCES if k.startswith(p + ".")), None)
        if src is not None:
            if not with_tracker:
                continue
            k = "inst_interactive_predictor.model." + k[len(src) + 1:]
        a = np.asarray(v)
        sub[k] = torch.from_numpy(a.astype(np.float32) if a.dtype.kind == "f" or a.dtype == jnp.bfloat16 else a)
    missing, _ = model.load_state_dict(sub, strict=False)
    missing = [k for k in missing if not k.endswith("freqs_cis")]
    if missing:
        raise ValueError(f"checkpoint lacks official keys, e.g. {missing[0]}")
    return model.eval(), state


def run_parity(
    cfg,
    *,
    seed: int = 0,
    batch: int = 2,
    texts: Sequence[str] | None = None,
    checkpoint: str | None = None,
    tolerance: float = 1e-5,
    detector_tolerance: float = 1e-4,
    tracker: bool = True,
    log=print,
) -> dict[str, Any]:
    """Builds (or loads) the official detector, converts it, runs both on the same photos and
    prompts, and compares every stage: encoders at `tolerance`, detector outputs (three prompt
    kinds) at `detector_tolerance`; with `tracker`, the tracker stages (`parity/tracker.py`) at
    `tolerance`."""
    from sam3_jax.convert import convert_image_model
    from sam3_jax.model.tokenizer import ClipTokenizer
    from sam3_jax.parity import oracle

    t0 = time.time()
    if checkpoint:
        if tracker:
            from sam3_jax.convert import load_state_dict
            from sam3_jax.convert.convert import normalize_keys, tracker_source

            if tracker_source(normalize_keys(load_state_dict(checkpoint))) is None:
                log("the checkpoint holds no tracker: tracker stages skipped")
                tracker = False
        ref_model, state = load_official_image_model(cfg, checkpoint, with_tracker=tracker)
    else:
        ref_model = oracle.random_image_model(cfg, seed, enable_inst_interactivity=tracker)
        state = oracle.state_dict_numpy(ref_model)
    log(f"official model ready ({time.time() - t0:.1f}s); converting")
    params, report = convert_image_model(state, cfg)
    log(report.summary())

    images, image_names = sample_images(cfg.image_size, batch, seed)
    texts = list(texts or DEFAULT_TEXTS)
    texts = (texts * batch)[:batch]
    prompts = prompt_sets(texts, batch, seed)
    tokenizer = ClipTokenizer()

    t1 = time.time()
    ref = oracle.run_backbone(ref_model, images, texts)
    ref_det = dict(zip(prompts, oracle.run_image_model(ref_model, images, list(prompts.values()))))
    t_ref = time.time() - t1

    image_fn, text_fn, ground_fn = _model_fns(cfg)
    t1 = time.time()
    tokens = tokenizer(texts, context_length=cfg.text.context_length)
    ours = jax.block_until_ready(image_fn(params, jnp.asarray(images)))
    ours_text = jax.block_until_ready(text_fn(params, jnp.asarray(tokens)))
    image_out = {"backbone_fpn": ours["backbone_fpn"], "vision_pos_enc": ours["vision_pos_enc"]}
    ours_det = {}
    for kind, p in prompts.items():
        n = p.get("boxes", np.zeros((batch, 0, 4), np.float32)).shape[1]
        ours_det[kind] = jax.device_get(ground_fn(
            params, image_out,
            jnp.asarray(tokenizer(p["texts"], context_length=cfg.text.context_length)),
            jnp.asarray(p.get("boxes", np.zeros((batch, n, 4), np.float32))),
            jnp.asarray(p.get("box_labels", np.zeros((batch, n), bool)).astype(np.int32)),
            jnp.asarray(p.get("box_mask", np.zeros((batch, n), bool))),
        ))
    t_ours = time.time() - t1

    stages = [compare("trunk", ours["trunk"], ref["trunk"], tolerance)]
    for i, (f, p) in enumerate(zip(ours["all_levels"], ref["levels"])):
        stages.append(compare(f"neck.convs.{i}", f, p, tolerance))
    for i, (f, p) in enumerate(zip(ours["all_pos"], ref["pos"])):
        stages.append(compare(f"neck.pos.{i}", f, p, tolerance))
    if "sam2_levels" in ref:
        for i, (f, p) in enumerate(zip(ours["sam2_all_levels"], ref["sam2_levels"])):
            stages.append(compare(f"neck.sam2_convs.{i}", f, p, tolerance))
        for i, (f, p) in enumerate(zip(ours["sam2_all_pos"], ref["sam2_pos"])):
            stages.append(compare(f"neck.sam2_pos.{i}", f, p, tolerance))
    stages.append(compare("text.token_ids", tokens, ref["token_ids"], 0.0))
    stages.append(compare("text.language_features", ours_text["language_features"], ref["language_features"], tolerance))
    stages.append(compare("text.language_mask", ours_text["language_mask"], ref["language_mask"], 0.0))
    stages.append(compare("text.language_embeds", ours_text["language_embeds"], ref["language_embeds"], tolerance))
    for kind in prompts:
        for name in DETECTOR_OUTPUTS:
            stages.append(compare(f"{kind}.{name}", ours_det[kind][name], ref_det[kind][name], detector_tolerance))

    timings = {"official_forward": t_ref, "jax_forward_incl_compile": t_ours}
    if tracker:
        from sam3_jax.parity.tracker import run_instance_parity, run_tracker_parity

        tracker_stages, t = run_tracker_parity(cfg, seed=seed, model=ref_model.inst_interactive_predictor.model,
                                               params=params["tracker"], tolerance=tolerance, log=log)
        stages += tracker_stages + run_instance_parity(ref_model, params, cfg, seed=seed, tolerance=tolerance)
        timings.update(t)

    header = f"{'stage':<46} {'shape':<22} {'max abs':>11} {'max rel':>11} {'tol':>9}  status"
    log(header)
    log("-" * len(header))
    for s in stages:
        log(s.row())
    ok = all(s.ok for s in stages)
    log(f"{'PASS' if ok else 'FAIL'}: {sum(s.ok for s in stages)}/{len(stages)} stages within tolerance")
    return {
        "ok": ok,
        "variant": cfg.variant,
        "seed": seed,
        "batch": batch,
        "checkpoint": checkpoint,
        "images": image_names,
        "texts": texts,
        "tolerance": {"encoders": tolerance, "detector": detector_tolerance, "tracker": tolerance},
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
        "seconds": timings,
        "conversion": report.to_json(),
        "stages": [{**dataclasses.asdict(s), "ok": s.ok, "shape": list(s.shape)} for s in stages],
    }


def write_report(report: dict[str, Any], path: str) -> None:
    import os
    import tempfile

    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, suffix=".json.tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, path)
