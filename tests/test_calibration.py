"""Calibrated thresholds: how they are chosen, stored with the gallery version, and applied by a
sweep; what a sweep records for regions between two classes."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from logoscan.calibration import choose_thresholds, outcome
from logoscan.thresholds import Thresholds
from logoscan.config import CalibrateConfig, PolicyConfig, ScanConfig


def _synthetic(seed=0):
    """600 known crops of two categories (close), 400 not in the gallery (farther, overlapping)."""
    rng = np.random.default_rng(seed)
    tl = np.array(["a"] * 300 + ["b"] * 300 + [""] * 400, object)
    tc = np.array(["x"] * 300 + ["y"] * 300 + [""] * 400, object)
    d = np.r_[rng.normal(0.2, 0.06, 600), rng.normal(0.5, 0.1, 400)]
    pl = tl.copy()
    pl[600:] = rng.choice(["a", "b"], 400)
    pc = np.where(pl == "a", "x", "y").astype(object)
    return tl, tc, pl, pc, d


@pytest.mark.parametrize("target", [0.005, 0.01, 0.05])
def test_thresholds_meet_the_false_accept_target_on_their_data(target):
    tl, tc, pl, pc, d = _synthetic()
    r = choose_thresholds(tl, tc, pl, pc, d, target, min_class_crops=50)
    th = Thresholds(9.9, {c: v["threshold"] for c, v in r["categories"].items()}, r["classes"])
    o = outcome(tl, np.where(tl == "", "unknown", "known"), pl, pc, d, th)
    assert o["false_accept_rate"] <= target
    assert o["recall_known"] > 0.8
    # looser target, higher recall
    assert all(0 < v["threshold"] < 1 for v in r["categories"].values())
    for label, t in r["classes"].items():  # a class threshold is never looser than its category's
        assert t < r["categories"]["x" if label == "a" else "y"]["threshold"]


def test_f1_mode_and_tiny_classes():
    tl, tc, pl, pc, d = _synthetic(1)
    far = choose_thresholds(tl, tc, pl, pc, d, 0.01)
    f1 = choose_thresholds(tl, tc, pl, pc, d, 0.01, mode="f1")
    assert f1["categories"]["x"]["threshold"] <= far["categories"]["x"]["threshold"] + 1e-6
    # a class whose share of the budget is under one false accept gets no threshold of its own
    few = choose_thresholds(tl[::10], tc[::10], pl[::10], pc[::10], d[::10], 0.01, min_class_crops=5)
    assert few["classes"] == {}


def test_threshold_precedence():
    th = Thresholds(0.5, by_category={"brand": 0.4, "prohibited": 0.3}, by_class={"nike": 0.2},
                    pinned={"prohibited": 0.1})
    assert th.lookup("nike", "brand") == (0.2, "class")
    assert th.lookup("adidas", "brand") == (0.4, "category")
    assert th.lookup("spiral", "prohibited") == (0.1, "policy")
    assert th.lookup("leaf", "sustainability") == (0.5, "default")


@pytest.fixture(scope="module")
def calibrated(sample, tmp_path_factory):
    """The sample gallery built into its own collection and calibrated on a small labelled set."""
    from logoscan.calibration import calibrate
    from logoscan.demo import make_calibration_crops
    from logoscan.gallery import build
    from logoscan.models import default_artifact_path, load_artifact
    work = tmp_path_factory.mktemp("cal")
    model, cfg = load_artifact(default_artifact_path("embedder"))
    meta = build(sample["references"], sample["milvus"], "logos_cal", model, cfg)
    crops = make_calibration_crops(work, seed=5, per_class=4, n_other=15, n_no_logo=20)
    result = calibrate(CalibrateConfig(crops=crops, milvus_uri=sample["milvus"], collection="logos_cal",
                                       out=str(work / "out"), target_far=0.02))
    return {"meta": meta, "result": result, "work": work, "crops": crops}


def test_calibrate_writes_thresholds_plots_and_stores_them_with_the_gallery(sample, calibrated):
    from logoscan.thresholds import read_calibration
    from logoscan.gallery import connect, read_metadata
    r, work = calibrated["result"], calibrated["work"]
    img = r["modes"]["image"]
    assert set(img["categories"]) == {"brand", "prohibited", "sustainability"}
    assert img["outcome"]["false_accept_rate"] <= 0.02 and img["outcome"]["recall_known"] >= 0.8
    assert set(img["outcome"]["by_kind"]) == {"known", "look-alike", "unknown", "no-logo"}
    ev = img["evidence"]  # the evidence model: no OCR in image mode, no detector score on given boxes
    assert ev["model"]["features"] == ["distance", "margin", "log_side"]
    assert ev["far"] <= 0.02 and 0 < ev["cut"] < 1 and list(ev["features_added"])[-1] == "distance+margin+log_side"
    on_disk = json.loads((work / "out" / "calibration.json").read_text())
    assert on_disk["gallery_version"] == calibrated["meta"]["gallery_version"]
    for p in r["plots"]:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    client = connect(sample["milvus"])
    try:
        stored = read_calibration(client, "logos_cal", read_metadata(client, "logos_cal"))
    finally:
        client.close()
    assert stored["modes"]["image"]["categories"] == img["categories"]


def test_sweep_applies_the_gallery_calibration_and_policy_pins_win(sample, calibrated, tmp_path):
    from logoscan.sweep import run_scan
    pinned = {"prohibited": {"threshold": 0.05}}
    s = run_scan(ScanConfig(manifest=sample["manifest"], milvus_uri=sample["milvus"], collection="logos_cal",
                            out=str(tmp_path), run_id="cal", engine="local",
                            policy=PolicyConfig(categories=pinned)))
    cal = s["versions"]["calibration"]
    assert cal["applied"] and cal["mode"] == "image"
    assert s["versions"]["thresholds_pinned"] == {"prohibited": 0.05}
    cats = calibrated["result"]["modes"]["image"]["categories"]
    rows = [r for p in s["outputs"]["queues"].values() for r in pq.read_table(p).to_pylist()]
    assert rows
    for r in rows:
        if r["category"] == "prohibited":
            assert r["threshold_source"] == "policy" and r["threshold"] == pytest.approx(0.05)
        else:
            assert r["threshold_source"] in ("category", "class")
            assert r["threshold"] <= cats[r["category"]]["threshold"] + 1e-6
        assert r["distance"] <= r["threshold"]
        if r["runner_up_label"] is not None:  # the margin to the runner-up class is recorded
            assert r["runner_up_label"] != r["label"]
            assert r["margin"] == pytest.approx(r["runner_up_distance"] - r["distance"], abs=1e-5)


def test_a_sweep_decided_by_evidence_flags_what_the_model_passes_and_says_why(sample, calibrated, tmp_path):
    from logoscan.evidence import Model
    from logoscan.sweep import run_scan
    cut = Model.from_dict(calibrated["result"]["modes"]["image"]["evidence"]["model"]).cut
    s = run_scan(ScanConfig(manifest=sample["manifest"], milvus_uri=sample["milvus"], collection="logos_cal",
                            out=str(tmp_path), run_id="ev", engine="local", policy=PolicyConfig(decision="evidence")))
    rows = [r for p in s["outputs"]["queues"].values() for r in pq.read_table(p).to_pylist()]
    assert rows and s["rows_in"] == s["rows_scanned"] + s["rows_reused"] + s["rows_errored"]
    for r in rows:
        assert r["threshold_source"] == "evidence" and r["evidence_score"] >= cut - 1e-6
        e = json.loads(r["evidence"])
        assert e["cut"] == pytest.approx(cut) and set(e["log_odds"]) == {"distance", "margin", "log_side"}
    # the reviewer's card says what decided it and what each piece of evidence added
    from logoscan.report import write_report
    write_report(str(tmp_path), str(tmp_path / "report"), run_id="ev")
    page = "".join(p.read_text() for p in (tmp_path / "report").glob("*.html"))
    assert page.count("decided by evidence P ") == len(rows) and "margin to runner-up" in page
    # a rematch of the stored regions decides the same way, to the same flags
    from logoscan.config import RematchConfig
    from logoscan.sweep import run_rematch
    r = run_rematch(RematchConfig(store=str(tmp_path / "store"), milvus_uri=sample["milvus"], collection="logos_cal",
                                  out=str(tmp_path / "rm"), run_id="rm", engine="local", all_flags=True,
                                  policy=PolicyConfig(decision="evidence")))
    again = [x for p in r["outputs"]["queues"].values() for x in pq.read_table(p).to_pylist()]
    key = lambda x: (x["item_id"], x["image_id"], x["label"], x["threshold_source"])  # noqa: E731
    assert sorted(map(key, again)) == sorted(map(key, rows))
    assert [x["evidence_score"] for x in sorted(again, key=key)] == \
        pytest.approx([x["evidence_score"] for x in sorted(rows, key=key)], abs=1e-4)


def test_rebuilt_gallery_starts_uncalibrated(sample, calibrated, tmp_path):
    from logoscan.thresholds import read_calibration
    from logoscan.gallery import build, connect, read_metadata
    from logoscan.models import default_artifact_path, load_artifact
    model, cfg = load_artifact(default_artifact_path("embedder"))
    build(sample["references"], sample["milvus"], "logos_cal2", model, cfg)
    client = connect(sample["milvus"])
    try:
        assert read_calibration(client, "logos_cal2", read_metadata(client, "logos_cal2")) is None
    finally:
        client.close()


def test_calibrate_cli_names_the_bad_column(sample, tmp_path):
    bad = tmp_path / "crops.parquet"
    pq.write_table(pa.table({"image_uri": ["a.png"], "lbl": ["x"]}), bad)
    r = subprocess.run([sys.executable, "-m", "logoscan", "calibrate", "--crops", str(bad), "--milvus-uri",
                        str(tmp_path / "x.db"), "--collection", "c", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "label" in r.stderr and "crops.parquet" in r.stderr


def test_a_lite_gallery_reopens_after_its_clients_were_idle(sample):
    """pymilvus keeps shared connections; reopening a Milvus Lite .db over 30 s after the last
    client closed used to fail ('Fail connecting to server'): a sweep whose Ray start-up took
    that long could not open its gallery again."""
    import time

    from logoscan.gallery import connect, read_metadata
    client = connect(sample["milvus"])
    client.close()
    time.sleep(31)
    client = connect(sample["milvus"])
    try:
        assert read_metadata(client, "logos")["references"] == sample["meta"]["references"]
    finally:
        client.close()


def test_a_blank_reference_is_refused_by_name(tmp_path):
    """A white logo on white would be every plain patch's nearest reference."""
    from PIL import Image

    from logoscan.gallery import GalleryError, build
    from logoscan.models import default_artifact_path, load_artifact
    Image.new("RGB", (64, 64), "white").save(tmp_path / "blank.png")
    pq.write_table(pa.table({"logo_id": ["ref-white"], "label": ["white"], "category": ["brand"],
                             "image_uri": [str(tmp_path / "blank.png")]}), tmp_path / "refs.parquet")
    model, cfg = load_artifact(default_artifact_path("embedder"))
    with pytest.raises(GalleryError, match="ref-white"):
        build(str(tmp_path / "refs.parquet"), str(tmp_path / "g.db"), "g", model, cfg)


def test_calibrate_takes_crops_without_a_kind(sample, calibrated, tmp_path):
    """`gallery ingest` appends rejected crops with a kind to a user's crops folder whose own rows
    may have none: null kinds are grouped by what the crop is, as if the column were absent."""
    from logoscan.calibration import calibrate
    t = pq.read_table(calibrated["crops"])
    kinds = t.column("kind").to_pylist()
    t = t.set_column(t.schema.get_field_index("kind"), "kind",
                     pa.array([k if i % 2 else None for i, k in enumerate(kinds)], pa.string()))
    pq.write_table(t, tmp_path / "crops.parquet")
    r = calibrate(CalibrateConfig(crops=str(tmp_path / "crops.parquet"), milvus_uri=sample["milvus"],
                                  collection="logos_cal", out=str(tmp_path / "out"), target_far=0.02, store=False))
    assert {"known", "not in gallery"} & set(r["modes"]["image"]["outcome"]["by_kind"])


def test_a_new_gallery_version_of_the_same_embedder_inherits_the_calibration(sample, calibrated, tmp_path):
    """`gallery add` builds a new version: it keeps the calibration, marked inherited with the labels
    it never saw, and a sweep says so (it used to fall back to the default threshold silently)."""
    from logoscan.thresholds import read_calibration
    from logoscan.feedback import add_logo
    from logoscan.gallery import build, connect, read_metadata
    from logoscan.models import default_artifact_path, load_artifact
    from logoscan.sweep import run_scan
    refs = tmp_path / "refs"
    refs.mkdir()
    pq.write_table(pq.read_table(sample["references"]), refs / "base.parquet")
    src = pq.read_table(sample["references"]).column("image_uri")[0].as_py()
    add_logo(str(refs), src, "brand-new-mark", "brand")
    model, cfg = load_artifact(default_artifact_path("embedder"))
    meta = build(str(refs), sample["milvus"], "logos_cal", model, cfg)
    assert meta["gallery_version"] != calibrated["meta"]["gallery_version"]
    assert meta["calibration"]["inherited_from"] == calibrated["meta"]["gallery_version"]
    assert meta["calibration"]["labels_not_calibrated"] == ["brand-new-mark"]
    client = connect(sample["milvus"])
    try:
        cal = read_calibration(client, "logos_cal", read_metadata(client, "logos_cal"))
    finally:
        client.close()
    assert cal["modes"]["image"]["categories"] == calibrated["result"]["modes"]["image"]["categories"]
    s = run_scan(ScanConfig(manifest=sample["manifest"], milvus_uri=sample["milvus"], collection="logos_cal",
                            out=str(tmp_path / "o"), engine="local"))
    assert s["versions"]["calibration"]["applied"]
    assert s["versions"]["calibration"]["inherited_from"] == calibrated["meta"]["gallery_version"]


# ------------------------------------------------------------------ the evidence model

def test_the_evidence_model_points_each_piece_the_right_way_and_keeps_the_false_accept_target():
    """Right nearest references are close, clear of the runner-up and read the reference's text
    more often; the model learns that, its cut keeps the target, and OCR agreement adds recall."""
    from logoscan.calibration import fit_evidence
    from logoscan.evidence import Model, features
    rng = np.random.default_rng(3)
    n_ok, n_bad = 600, 900
    correct = np.r_[np.ones(n_ok, bool), np.zeros(n_bad, bool)]
    d = np.r_[rng.normal(0.30, 0.08, n_ok), rng.normal(0.42, 0.08, n_bad)]
    ru = d + np.r_[rng.normal(0.15, 0.05, n_ok), rng.normal(0.03, 0.03, n_bad)]
    agree = np.r_[np.where(rng.random(n_ok) < 0.4, rng.uniform(0.6, 1, n_ok), np.nan),
                  np.where(rng.random(n_bad) < 0.2, rng.uniform(0, 0.3, n_bad), np.nan)]
    side = rng.uniform(20, 200, n_ok + n_bad)  # says nothing here
    ev = features(d, ru, agree, None, side)
    r = fit_evidence(ev, correct, known=n_ok, target_far=0.01)
    m = Model.from_dict(r["model"])
    w = dict(zip(m.features, m.weights))
    assert m.features == ("distance", "margin", "ocr_agreement", "log_side")
    assert w["distance"] < 0 < w["margin"] and w["ocr_agreement"] > 0 and abs(w["log_side"]) < 0.5
    assert r["far"] <= 0.01 and r["false_accepts"] <= 0.01 * len(correct)
    flagged = m.probability(ev) >= m.cut
    assert (flagged & ~correct).sum() == r["false_accepts"]
    steps = r["features_added"]
    assert list(steps) == ["distance", "distance+margin", "distance+margin+ocr_agreement",
                           "distance+margin+ocr_agreement+log_side"]
    assert steps["distance+margin+ocr_agreement"]["recall"] > steps["distance"]["recall"] + 0.1
    assert fit_evidence(ev, np.zeros_like(correct), known=n_ok, target_far=0.01) is None  # nothing to fit


def test_decide_by_evidence_flags_by_probability_and_explains_it_except_where_policy_pins():
    from logoscan import stages
    from logoscan.evidence import Model, confidence, describe
    model = Model(("distance", "ocr_agreement"), (0.4, 0.0), (0.1, 0.5), (-2.0, 3.0), 0.0, cut=0.6)
    batch = {"kind": np.array(["region"] * 4 + ["empty"], object),
             "label": np.array(["a", "a", "b", "b", ""], object),
             "category": np.array(["x", "x", "y", "y", ""], object),
             # far but the text agrees · close, no text · close, text disagrees · pinned category
             "distance": np.array([0.55, 0.25, 0.30, 0.30, np.nan], np.float32),
             "runner_up_distance": np.full(5, np.nan, np.float32),
             "ocr_agreement": np.array([1.0, np.nan, 0.0, 0.9, np.nan], np.float32),
             "det_score": np.ones(5, np.float32), "box": np.tile([0, 0, 50, 50], (5, 1)).astype(np.float32)}
    th = Thresholds(0.35, evidence=model.to_dict(), decide_by_evidence=True)
    out = stages.decide(batch, PolicyConfig(), th)
    p = model.probability({"distance": batch["distance"][:4].astype(float),
                           "ocr_agreement": np.nan_to_num(batch["ocr_agreement"][:4].astype(float))})
    np.testing.assert_allclose(out["evidence_score"][:4], p, rtol=1e-5)
    assert list(out["flagged"]) == list(np.r_[p >= 0.6, False])
    assert out["flagged"][0] and not (batch["distance"][0] <= 0.35)  # the text carried a far region
    assert list(out["threshold_source"][:4]) == ["evidence"] * 4
    row = {k: out[k][0] for k in ("evidence_score", "evidence", "threshold_source", "threshold", "distance")}
    assert confidence(row) == pytest.approx(p[0] - 0.6, abs=1e-5)
    assert describe(row["evidence_score"], row["evidence"]).startswith(f"P {p[0]:.2f} (flags at ≥ 0.60): text read")
    # a pinned category keeps the distance rule; "distance" decisions show the evidence only
    from dataclasses import replace
    pinned = stages.decide(batch, PolicyConfig(), replace(th, pinned={"y": 0.31}))
    assert list(pinned["threshold_source"][2:4]) == ["policy", "policy"] and pinned["flagged"][2:4].all()
    shown = stages.decide(batch, PolicyConfig(), Thresholds(0.35, evidence=model.to_dict()))
    assert list(shown["flagged"][:4]) == [False, True, True, True] and not np.isnan(shown["evidence_score"][:4]).any()


def test_calibrate_on_the_detectors_regions_labels_them_by_overlap_and_scores_them(sample, calibrated, tmp_path):
    """`calibrate --detect`: the crops are the detector's regions, as a sweep cuts them, with its
    score; a region over a labelled box takes its label, any other must not be flagged."""
    from logoscan.calibration import _iou, calibrate
    np.testing.assert_allclose(_iou(np.array([[0, 0, 10, 10.]]), np.array([[0, 0, 10, 10.], [5, 0, 15, 10], [20, 20, 30, 30]])),
                               [[1.0, 1 / 3, 0.0]])
    known = sum(1 for r in pq.read_table(calibrated["crops"]).to_pylist() if r["label"])
    r = calibrate(CalibrateConfig(crops=calibrated["crops"], milvus_uri=sample["milvus"], collection="logos_cal",
                                  out=str(tmp_path), target_far=0.02, store=False, detect=True))
    d = r["detected"]
    assert d["labelled_boxes"] == known and d["labelled_boxes_missed"] <= 0.1 * known
    assert r["crops"] == d["detections"] and r["known_crops"] >= known - d["labelled_boxes_missed"]
    img = r["modes"]["image"]
    assert img["outcome"]["false_accept_rate"] <= 0.02 and img["outcome"]["recall_known"] > 0
    assert img["evidence"] is None or "det_score" in img["evidence"]["model"]["features"]
