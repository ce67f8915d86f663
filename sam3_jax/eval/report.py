"""Evaluation report: a printed table, a JSON file and a PNG figure.

The figure has two panels: the per-IoU-threshold curves (positive micro F1 and cgF1 for each IoU
type; pHOTA's HOTA/DetA/AssA over alpha for videos) and a histogram of prediction scores with the
0.5 cut. It is drawn with matplotlib when that is installed, otherwise with Pillow.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Optional, Sequence

import numpy as np

# --------------------------------------------------------------------------------------------- JSON
def to_jsonable(x: Any) -> Any:
    """numpy scalars/arrays -> Python; NaN/inf -> None (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return to_jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, (np.bool_,)):
        return bool(x)
    return x


def write_json(path: str, report: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(to_jsonable(report), f, indent=1, allow_nan=False)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------- table
def _fmt(v: Optional[float], scale: float = 1.0, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if v == -1:
        return "-1"
    return f"{v * scale:.{digits}f}"


def _row(label: str, cells: Sequence[tuple], extra: str = "") -> str:
    """cells: (value, width, scale, digits)."""
    return f"{label:<5} " + " ".join(f"{_fmt(v, sc, dg):>{wd}}" for v, wd, sc, dg in cells) + extra


def format_table(report: dict) -> str:
    """A fixed-width text table of the headline numbers (cgF1 and pmF1 x 100, IL_MCC as is)."""
    lines = []
    res = report.get("results", {})
    if report.get("task") == "image":
        lines.append(f"SA-Co image metrics: {res.get('num_pairs', '?')} scored image-phrase pairs, "
                     f"{res.get('num_annotators', 1)} GT file(s)")
        cols = ["cgF1", "IL_MCC", "pmF1", "cgF1@50", "cgF1@75", "pmF1@50", "macroF1"]
        hdr = f"{'IoU':<5} " + " ".join(f"{c:>8}" for c in cols) + "   IL TP/FP/TN/FN"
        lines += [hdr, "-" * len(hdr)]
        for it, r in res.get("cgf1", {}).items():
            m = {k[len(f"cgF1_eval_{it}_"):]: v for k, v in r["metrics"].items()}
            c = r["IL_counts"]
            keys = ["cgF1", "IL_MCC", "positive_micro_F1", "cgF1@0.5", "cgF1@0.75", "positive_micro_F1@0.5",
                    "positive_macro_F1"]
            cells = [(m[k], 8, 1 if k == "IL_MCC" else 100, 3 if k == "IL_MCC" else 2) for k in keys]
            lines.append(_row(it, cells, f"   {c['TP']}/{c['FP']}/{c['TN']}/{c['FN']}"))
        if res.get("coco_ap"):
            lines.append("")
            hdr = f"{'COCO':<5} " + " ".join(f"{c:>8}" for c in ("AP", "AP50", "AP75", "AR100"))
            lines += [hdr, "-" * len(hdr)]
            for it, st in res["coco_ap"].items():
                lines.append(_row(it, [(st[k], 8, 100, 2) for k in ("AP", "AP50", "AP75", "AR100")]))
    elif report.get("task") == "video":
        lines.append(f"SA-Co video metrics: {res.get('num_pairs', '?')} video-phrase pairs")
        cols = ["cgF1", "IL_MCC", "pmF1", "pHOTA", "DetA", "AssA", "LocA"]
        hdr = f"{'IoU':<5} " + " ".join(f"{c:>8}" for c in cols)
        lines += [hdr, "-" * len(hdr)]
        m = res.get("metrics", {})
        for it in res.get("cgf1", {}):
            t = "mask" if it == "segm" else "bbox"
            keys = [f"video_{t}_demo_cgf1_micro_50_95", f"video_{t}_demo_ilmcc_50_95",
                    f"video_{t}_demo_positive_micro_f1_50_95"] + [f"video_{t}_all_phrase_{f}" for f in
                                                                 ("HOTA", "DetA", "AssA", "LocA")]
            cells = [(m.get(k), 8, 1 if "ilmcc" in k else 100, 3 if "ilmcc" in k else 2) for k in keys]
            lines.append(_row(it, cells))
    for n in report.get("notes", []):
        lines.append(f"note: {n}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- figure
_COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75)]


def _series(report: dict) -> tuple[str, list, list[tuple[str, list]]]:
    res = report.get("results", {})
    if report.get("task") == "video":
        out = []
        for it, r in res.get("cgf1", {}).items():
            out.append((f"{it} pmF1", r["curves"]["positive_micro_F1"]))
            if r.get("has_video_np_pairs"):
                out.append((f"{it} cgF1", r["curves"]["cgF1"]))
        xs = res["cgf1"][next(iter(res["cgf1"]))]["iou_thresholds"] if res.get("cgf1") else []
        return "IoU threshold", xs, out
    out = []
    xs = []
    for it, r in res.get("cgf1", {}).items():
        xs = r["iou_thresholds"]
        out.append((f"{it} pmF1", r["curves"]["positive_micro_F1"]))
        out.append((f"{it} cgF1", r["curves"]["cgF1"]))
    return "IoU threshold", xs, out


def save_figure(path: str, report: dict, scores: Sequence[float], title: str = "") -> str:
    """Writes the PNG; returns which backend drew it ("matplotlib" or "pillow")."""
    xlabel, xs, series = _series(report)
    scores = np.asarray(list(scores), dtype=np.float64)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001 - any import problem means: draw with Pillow
        _pil_figure(path, xlabel, xs, series, scores, title)
        return "pillow"
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, ys in series:
        a1.plot(xs, ys, marker="o", label=name)
    lo = min([0.0] + [min(y) for _, y in series if y])
    a1.set_xlabel(xlabel), a1.set_ylabel("score"), a1.set_ylim(-1.0 if lo < 0 else 0.0, 1.0)
    a1.set_title("F1 per IoU threshold"), a1.grid(alpha=0.3)
    if series:
        a1.legend(fontsize=8)
    a2.hist(scores, bins=20, range=(0, 1), color="#1f77b4")
    a2.axvline(0.5, color="#d62728", linestyle="--")
    a2.set_xlabel("prediction score"), a2.set_ylabel("count"), a2.set_title(f"scores ({len(scores)} predictions)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return "matplotlib"


def _pil_figure(path, xlabel, xs, series, scores, title) -> None:
    from PIL import Image, ImageDraw, ImageFont

    W, H = 1100, 440
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    if title:
        d.text((W // 2 - 3 * len(title), 6), title, fill="black", font=font)

    def axes(x0, y0, x1, y1, ymin, ymax, xmin, xmax, xt, yt, xl, yl, ttl):
        d.rectangle([x0, y0, x1, y1], outline="black")
        for v in yt:
            py = y1 - (v - ymin) / (ymax - ymin) * (y1 - y0)
            d.line([x0, py, x1, py], fill=(225, 225, 225))
            d.text((x0 - 34, py - 6), f"{v:g}" if float(v).is_integer() else f"{v:.2f}", fill="black", font=font)
        for v in xt:
            px = x0 + (v - xmin) / (xmax - xmin) * (x1 - x0)
            d.line([px, y1, px, y1 + 4], fill="black")
            d.text((px - 10, y1 + 8), f"{v:.2f}", fill="black", font=font)
        d.text(((x0 + x1) // 2 - 3 * len(xl), y1 + 24), xl, fill="black", font=font)
        d.text((x0, y0 - 16), f"{ttl}   (y: {yl})", fill="black", font=font)

        def to_px(x, y):
            return (x0 + (x - xmin) / (xmax - xmin) * (x1 - x0), y1 - (y - ymin) / (ymax - ymin) * (y1 - y0))

        return to_px

    # left: curves
    lo = min([0.0] + [min(v for v in ys if v is not None) for _, ys in series if ys])
    ymin = -1.0 if lo < 0 else 0.0
    xmin, xmax = (min(xs), max(xs)) if xs else (0.5, 0.95)
    if xmax == xmin:
        xmax = xmin + 1
    to_px = axes(70, 40, 520, 370, ymin, 1.0, xmin, xmax, xs[::2] if xs else [], np.linspace(ymin, 1, 5),
                 xlabel, "score", "F1 per IoU threshold")
    for i, (name, ys) in enumerate(series):
        col = _COLORS[i % len(_COLORS)]
        pts = [to_px(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
        if len(pts) > 1:
            d.line(pts, fill=col, width=2)
        for px, py in pts:
            d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=col)
        d.rectangle([360, 50 + 16 * i, 372, 60 + 16 * i], fill=col)
        d.text((378, 49 + 16 * i), name, fill="black", font=font)
    # right: histogram
    counts, edges = np.histogram(scores, bins=20, range=(0.0, 1.0))
    top = max(1, int(counts.max()))
    step = max(1, int(math.ceil(top / 4)))
    top = step * int(math.ceil(top / step))
    to_px = axes(620, 40, 1070, 370, 0, top, 0.0, 1.0, np.linspace(0, 1, 6), np.arange(0, top + 1, step),
                 "prediction score", "count", f"scores ({scores.size} predictions)")
    for c, a, b in zip(counts, edges[:-1], edges[1:]):
        if c:
            (px0, py0), (px1, py1) = to_px(a, c), to_px(b, 0)
            d.rectangle([px0 + 1, py0, px1 - 1, py1], fill=_COLORS[0])
    (px, _), (_, py1) = to_px(0.5, top), to_px(0.5, 0)
    for yy in range(40, 370, 8):
        d.line([px, yy, px, min(yy + 4, 370)], fill=_COLORS[1], width=2)
    img.save(path, format="PNG")
