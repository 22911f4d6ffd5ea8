"""Small PNG charts drawn with PIL (no plotting library: one less dependency in the venv)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

BLUE, RED, GREEN, GREY = (40, 110, 220), (220, 60, 60), (0, 150, 0), (120, 120, 120)


def _axes(d: ImageDraw.ImageDraw, x0: int, W: int, H: int, pad: int, xmax: float, title: str,
          threshold: float | None):
    d.line([x0, H - pad, x0 + W - 2 * pad, H - pad], fill="black")
    for t in np.linspace(0, xmax, 5):
        xt = x0 + t / xmax * (W - 2 * pad)
        d.text((xt - 8, H - pad + 4), f"{t:.2f}", fill="black")
    d.text((x0, 8), title, fill="black")
    if threshold is not None:
        xt = x0 + min(threshold, xmax) / xmax * (W - 2 * pad)
        d.line([xt, pad, xt, H - pad], fill=GREEN)


def _save(img: Image.Image, d: ImageDraw.ImageDraw, caption: str, pad: int, H: int, path) -> None:
    d.text((pad, H + 18), caption, fill="black")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def histograms(path: str | Path, panels: list[tuple[str, np.ndarray, np.ndarray, float | None]],
               caption: str, xmax: float = 1.2) -> None:
    """One panel per (title, blue values, red values, threshold or None): normalised histograms
    of distances, the threshold as a green line."""
    W, H, pad = 420, 260, 30
    img = Image.new("RGB", (W * max(len(panels), 1), H + 40), "white")
    d = ImageDraw.Draw(img)
    bins = np.linspace(0, xmax, 49)
    for p, (title, blue, red, threshold) in enumerate(panels):
        x0 = p * W + pad
        hb = np.histogram(np.clip(blue, 0, xmax - 1e-6), bins)[0] / max(len(blue), 1)
        hr = np.histogram(np.clip(red, 0, xmax - 1e-6), bins)[0] / max(len(red), 1)
        top = max(hb.max(initial=0), hr.max(initial=0), 1e-9)
        bw = (W - 2 * pad) / (len(bins) - 1)
        for h, col in ((hr, RED), (hb, BLUE)):
            pts = []
            for k in range(len(bins) - 1):
                y = H - pad - (H - 2 * pad) * h[k] / top
                pts += [(x0 + k * bw, y), (x0 + (k + 1) * bw, y)]
            d.line(pts, fill=col, width=2)
        _axes(d, x0, W, H, pad, xmax, title, threshold)
    _save(img, d, caption, pad, H, path)


def curves(path: str | Path, panels: list[tuple[str, np.ndarray, dict[str, tuple[tuple, np.ndarray]], float | None]],
           caption: str) -> None:
    """One panel per (title, x values, {name: (rgb, y values in [0, 1])}, threshold or None)."""
    W, H, pad = 420, 260, 30
    img = Image.new("RGB", (W * max(len(panels), 1), H + 40), "white")
    d = ImageDraw.Draw(img)
    for p, (title, xs, series, threshold) in enumerate(panels):
        x0 = p * W + pad
        xmax = float(max(np.max(xs, initial=0), 1e-6))
        for name, (col, ys) in series.items():
            pts = [(x0 + x / xmax * (W - 2 * pad), H - pad - (H - 2 * pad) * float(np.clip(y, 0, 1)))
                   for x, y in zip(xs, ys)]
            if len(pts) > 1:
                d.line(pts, fill=col, width=2)
        d.line([x0, pad, x0, H - pad], fill=GREY)
        d.text((x0 - 12, pad - 6), "1", fill="black")
        _axes(d, x0, W, H, pad, xmax, title, threshold)
    _save(img, d, caption, pad, H, path)
