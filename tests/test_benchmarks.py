"""The benchmark scripts run end to end (tiny sizes) and print their tables: they must not rot
between the runs whose numbers are committed under docs/bench/."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, timeout=600):
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_bench_detector_prints_its_table(tmp_path):
    from test_yolo import make_yolo
    root = make_yolo(tmp_path / "photos", {f"p_{i}": "0 0.375 0.4167 0.25 0.3333\n" for i in range(1, 9)})
    (tmp_path / "real.yaml").write_text(f"datasets: [{{path: '{root}', heldout_share: 0.25}}]\n")
    out = _run("jobs/bench_detector.py", "--scenes", "4", "--empty", "2", "--threads", "1",
               "--real-config", str(tmp_path / "real.yaml"), "--logo-free-crops", "1",
               "--write", str(tmp_path / "d.md"))
    assert "| AP50 | recall |" in out and "false det. / logo-free image" in out
    assert "| photos | 2 | 2 |" in out              # the two held-out photos, one box each
    assert "false detections / logo-free photo" in out
    assert "| AP50 | recall |" in (tmp_path / "d.md").read_text()
    (tmp_path / "gone.yaml").write_text(f"datasets: [{{path: '{tmp_path / 'gone'}'}}]\n")
    missing = _run("jobs/bench_detector.py", "--scenes", "2", "--empty", "1", "--threads", "1", "--tiles", "2",
                   "--real-config", str(tmp_path / "gone.yaml"))
    assert "Not measured" in missing and "gone not found" in missing
    assert "--tiles 2 --tile-overlap 0.25 --tile-max-px 32" in missing and "2x2 windows (`detect_tiled`)" in missing


def test_bench_embedder_runs_the_ablation(tmp_path):
    tiny = ["--set", "backbone=tiny_cnn", "--set", "imagenet_init=false", "--set", "n_invented=12",
            "--set", "n_brands=30", "--set", "holdout=0.4", "--set", "views_per_class=4",
            "--set", "batch_size=8", "--set", "m_per_class=2", "--set", "max_steps=2",
            "--set", "max_minutes=null", "--set", "n_families=5", "--set", "workers=1",
            "--set", "font_dirs=[]"]
    out = _run("jobs/bench_embedder.py", "--out", str(tmp_path / "abl"), "--queries", "1",
               "--threads", "1", "--shipped", "", "--real", "", "--write", str(tmp_path / "e.md"), *tiny)
    for row in ("(a) init only", "(b) proxy loss alone", "(c) proxy + text hard negatives"):
        assert row in out
    assert (tmp_path / "e_distances.png").stat().st_size > 1000   # named after the report


def test_bench_calibration_prints_both_cases(tmp_path):
    out = _run("jobs/bench_calibration.py", "--brands", "5", "--per-class", "1", "--no-logo", "5",
               "--demo-per-class", "2", "--demo-others", "5", "--no-ocr", "--workdir", str(tmp_path / "w"),
               "--write", str(tmp_path / "c.md"))
    assert "## 1. The demo gallery" in out and "## 2. A large held-out gallery" in out
    assert "| image only | calibrated |" in out and "| image only | evidence: distance |" in out
    assert (tmp_path / "calibration_demo_image_distances.png").stat().st_size > 1000


def test_bench_incremental_prints_both_tables(tmp_path):
    out = _run("jobs/bench_incremental.py", "--images", "40", "--large-gallery", "300", "--rematch-copies", "2",
               "--num-cpus", "2", "--workdir", str(tmp_path / "w"), "--write", str(tmp_path / "i.md"))
    assert "| night 2: --incremental (1% churn) |" in out and "## rematch throughput" in out
    assert "equal the full sweep's: **True**" in out
    assert "| 300 | HNSW |" in (tmp_path / "i.md").read_text()


def test_bench_throughput_prints_its_tables(tmp_path):
    """... and ``--write`` replaces only the doc's generated part: the dated sections under it stay."""
    doc = tmp_path / "t.md"
    doc.write_text("# Sweep throughput\n\n## An earlier run (2026-11-30)\n\nwhat it measured\n")
    out = _run("jobs/bench_throughput.py", "--images", "12", "--floor-images", "8", "--galleries", "100,300",
               "--workdir", str(tmp_path / "w"), "--write", str(doc))
    for row in ("| 1. decode floor |", "| 2. model floor |", "| 3. naive baseline |", "| 4. the sweep |",
                "| sweep, 5N=60, 100 refs |", "- ceiling: decode + models", "## Where the time goes"):
        assert row in out and row in doc.read_text()
    text = doc.read_text()
    assert text.index("## Where the time goes") < text.index("## An earlier run (2026-11-30)\n\nwhat it measured")
    from jobs.benchdoc import write_report  # the next run replaces its own table; the earlier section stays, once
    text = write_report(doc, "# Sweep throughput\n\n| 1. decode floor | 1 |\n", "jobs/bench_throughput.py").read_text()
    assert text.count("| 1. decode floor |") == 1 and "## Where the time goes" not in text
    assert text.count("## An earlier run (2026-11-30)") == 1 and text.startswith("# Sweep throughput\n")
    assert write_report(doc, text, "jobs/bench_throughput.py").read_text() == text  # a doc fed back in: unchanged


def test_bench_evidence_real_prints_both_calibrations(tmp_path):
    from test_real_embedder import make_real_photos
    data = make_real_photos(tmp_path / "real")
    out = _run("jobs/bench_evidence_real.py", "--data", str(data), "--heldout-makes", "kia", "--free-per-photo", "1",
               "--patches", "2", "--write", str(tmp_path / "e.md"))
    assert "## Calibrated on A: the held-out makes' other photos" in out and "## Calibrated on B" in out
    assert out.count("| distance threshold (as `logoscan calibrate`) |") == 2
    assert (tmp_path / "e.md").read_text().startswith("# The evidence-based decision on real photographs")


def test_bench_calibration_on_the_detectors_regions_adds_the_detector_score(tmp_path):
    r = subprocess.run([sys.executable, "jobs/bench_calibration.py", "--detect"], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 2 and "--detect needs --no-ocr" in r.stderr
    out = _run("jobs/bench_calibration.py", "--brands", "5", "--per-class", "1", "--no-logo", "5",
               "--demo-per-class", "2", "--demo-others", "5", "--no-ocr", "--detect", "--workdir", str(tmp_path / "w"))
    assert "| image only | evidence: + detector score |" in out and "labelled boxes missed)" in out


def test_bench_real_sweep_with_photo_exemplars_sweeps_both_galleries(tmp_path):
    import pyarrow.parquet as pq

    from test_real_embedder import make_real_photos
    data = make_real_photos(tmp_path / "real")
    out = _run("jobs/bench_real_sweep.py", "--data", str(data), "--heldout-makes", "kia", "--exemplars", "1",
               "--detector-tiles", "2", "--logo-free-crops", "1", "--work", str(tmp_path / "w"),
               "--write", str(tmp_path / "s.md"))
    assert "--detector-tiles 2" in out and "2x2 windows of it" in out
    refs = pq.read_table(tmp_path / "w" / "references-exemplars.parquet").to_pylist()
    photos = [r for r in refs if "#photo-" in r["logo_id"]]
    assert sorted(r["label"] for r in photos) == ["audi", "honda", "kia"] and all(r["box"] for r in photos)
    kia = next(r for r in photos if r["label"] == "kia")["image_uri"]
    catalog = pq.read_table(tmp_path / "w" / "manifest.parquet").column("image_uri").to_pylist()
    assert kia not in catalog and sum("kia_" in u for u in catalog) == 3      # the exemplar left the catalog
    assert "| shipped (embedder-v3) | 5 | 1 | default threshold |" in out
    assert "| shipped (embedder-v3) | 8 | 1 | default threshold |" in out
