"""OCR text fusion: easyocr offline on region crops, character n-gram text similarity, and the
re-ranking of image neighbours by what a region reads."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from logoscan import stages, textfeat
from logoscan.config import CalibrateConfig, OcrConfig, ScanConfig


def test_text_similarity_ranks_the_right_name_first():
    read = "[Heinz"  # what OCR makes of a small logo: a stray bracket
    assert textfeat.similarity(read, "Heinz") > textfeat.similarity(read, "Heineken") > textfeat.similarity(read, "Nike")
    assert textfeat.similarity("Heinz Baked Beans", "Heinz Baked Beans") == pytest.approx(1.0)
    assert textfeat.similarity("Heinz", "Heinz Baked Beans") < 0.9
    assert textfeat.similarity("", "Heinz") is None and textfeat.similarity("x", "Heinz") is None


def test_fuse_reranks_by_text_and_leaves_textless_candidates_alone():
    hits = [{"label": "heineken", "text": "Heineken", "distance": 0.30},
            {"label": "heinz", "text": "Heinz", "distance": 0.32},
            {"label": "leaf", "text": "", "distance": 0.35}]
    fused = stages.fuse(hits, "HEINZ", weight=0.3, floor=0.5)
    assert [h["label"] for h in fused][:2] == ["heinz", "heineken"]
    assert next(h for h in fused if h["label"] == "leaf")["distance"] == 0.35
    assert stages.fuse(hits, "", 0.3, 0.5) == hits  # nothing read: image order


@pytest.fixture(scope="module")
def reader():
    from logoscan.ocr import load_reader
    return load_reader()


def test_easyocr_reads_a_wordmark_crop_offline(reader):
    from logoscan.ocr import read_crops
    from logoscan.synth.crops import clean_view
    from logoscan.synth.marks import Mark, fonts
    font = next(f for f in fonts() if f.endswith("DejaVuSans-Bold.ttf"))
    crop = clean_view(Mark(key="w", kind="wordmark", text="Kolavi", font=font), 96, 0.15)
    [text] = read_crops(reader, [np.asarray(crop)])
    assert textfeat.similarity(text, "Kolavi") >= 0.6, text


def test_missing_weights_folder_is_a_clear_error(tmp_path):
    from logoscan.ocr import OcrUnavailable, load_reader
    with pytest.raises(OcrUnavailable, match="craft_mlt_25k.pth"):
        load_reader(folder=str(tmp_path))


def test_sweep_with_ocr_on_ray_records_text_and_needs_its_own_calibration(sample, tmp_path):
    from logoscan.config import RayConfig
    from logoscan.sweep import run_scan
    s = run_scan(ScanConfig(manifest=sample["manifest"], milvus_uri=sample["milvus"], collection="logos",
                            out=str(tmp_path), run_id="ocr", engine="ray", ocr=OcrConfig(enabled=True),
                            ray=RayConfig(num_cpus=2, fetch_batch=4)))
    assert s["versions"]["ocr"] is True and s["rows_scanned"] + s["rows_errored"] == s["rows_in"]
    rows = [r for p in s["outputs"]["queues"].values() for r in pq.read_table(p).to_pylist()]
    assert rows and "ocr_text" in rows[0]
    assert all(r["threshold_source"] == "default" for r in rows)  # this gallery was not calibrated


def test_calibrate_with_ocr_adds_fused_thresholds(sample, tmp_path):
    from logoscan.calibration import calibrate
    from logoscan.demo import make_calibration_crops
    crops = make_calibration_crops(tmp_path, seed=9, per_class=2, n_other=5, n_no_logo=5)
    r = calibrate(CalibrateConfig(crops=crops, milvus_uri=sample["milvus"], collection="logos",
                                  out=str(tmp_path / "out"), store=False, ocr=OcrConfig(enabled=True)))
    assert set(r["modes"]) == {"image", "ocr"} and r["ocr"]["ms_per_crop"] > 0
    assert set(r["modes"]["ocr"]["categories"]) == set(r["modes"]["image"]["categories"])
