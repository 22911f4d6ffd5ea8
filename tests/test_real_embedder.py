"""The embedder on real photographs: the real-photo training pool never holds a held-out make in
any form, training on it writes the threshold probes a gallery's default is measured with (so
`gallery build` renders nothing), gallery-side views map to their logo, and the real zero-shot
protocol counts a logo with several vectors once."""
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from logoscan.thresholds import gallery_threshold
from logoscan.models import load_artifact
from logoscan.refviews import VIEWS, reference_views
from logoscan.synth.badges import photo_view
from logoscan.train.realcrops import ExtraPool, real_pool, report_by_size, retrieval_report

ROOT = Path(__file__).resolve().parents[1]
MAKES = ("Audi", "Honda", "kia")


def _logo(path: Path, colour, shape: str):
    im = Image.new("RGBA", (64, 40), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    (d.ellipse if shape == "o" else d.rectangle)((4, 4, 60, 36), fill=colour + (255,))
    im.save(path)


def make_real_photos(root: Path) -> Path:
    """A miniature ../shared/data/real-photos: 3 makes x 4 photos, their clean logos (kia with a
    variant), 6 signboard photos."""
    rng = random.Random(0)
    cars = root / "car-badges"
    (cars / "images").mkdir(parents=True)
    (cars / "labels").mkdir()
    (cars / "classes.txt").write_text("\n".join(MAKES) + "\n")
    for c, make in enumerate(MAKES):
        for i in range(4):
            im = Image.new("RGB", (160, 120), tuple(rng.randint(60, 200) for _ in range(3)))
            ImageDraw.Draw(im).ellipse((60, 40, 100, 70), fill=(220, 220, 220))
            im.save(cars / "images" / f"{make}_{i}.jpg")
            (cars / "labels" / f"{make}_{i}.txt").write_text(f"{c} 0.5 0.46 0.25 0.25\n")
    logos = root / "car-logos-clean"
    logos.mkdir()
    for stem, col, shape in (("audi", (20, 20, 20), "o"), ("honda", (200, 0, 0), "r"), ("kia", (0, 0, 200), "o"),
                             ("kia-sport", (0, 100, 200), "r"), ("opel", (200, 200, 0), "o")):
        _logo(logos / f"{stem}.png", col, shape)
    signs = root / "signboards"
    (signs / "images").mkdir(parents=True)
    (signs / "labels").mkdir()
    (signs / "classes.txt").write_text("logo\n")
    for i in range(6):
        im = Image.new("RGB", (160, 120), (90, 90, 90))
        ImageDraw.Draw(im).rectangle((30, 30, 90, 60), fill=(250, 250, 0))
        im.save(signs / "images" / f"shop_{i}.jpg")
        (signs / "labels" / f"shop_{i}.txt").write_text("0 0.375 0.375 0.375 0.25\n")
    return root


def test_real_pool_never_holds_a_heldout_make(tmp_path):
    data = make_real_photos(tmp_path / "real")
    pool = real_pool(data, size=32, pad=0.15, heldout_makes=("kia",), crop_views=2, badge_views=3, clean_views=2)
    assert isinstance(pool, ExtraPool) and pool.views.shape[1:] == (32, 32, 3)
    names = set(pool.names)
    assert {"make:Audi", "make:Honda"} <= names and not any("kia" in n.lower() for n in names)
    assert {"logo:audi", "logo:honda", "logo:opel"} <= names        # clean logos of the other makes
    by_source = {s: pool.sources.count(s) for s in ("make", "instance", "badge")}
    assert by_source == {"make": 2, "instance": 5, "badge": 3}       # 6 signboards, the last 15% held out
    clean, photo, _ = pool.class_views()
    audi = pool.names.index("make:Audi")
    assert len(clean[audi]) == 2 and len(photo[audi]) == 4 * 2       # 4 photos x 2 crops each
    inst = pool.sources.index("instance")
    assert len(clean[inst]) == 0 and len(photo[inst]) == 2


def test_photo_view_is_a_crop_of_the_input_size_and_deterministic():
    logo = Image.new("RGBA", (50, 30), (0, 0, 0, 0))
    ImageDraw.Draw(logo).ellipse((2, 2, 48, 28), fill=(200, 0, 0, 255))
    photo = Image.new("RGB", (300, 200), (40, 120, 40))
    a = [np.asarray(photo_view(random.Random(3), logo, photo, 64, 0.15)) for _ in range(2)]
    assert a[0].shape == (64, 64, 3) and np.array_equal(a[0], a[1])


def test_reference_views_keep_the_logo_and_change_its_ground():
    im = Image.new("RGB", (48, 48), (255, 255, 255))
    ImageDraw.Draw(im).rectangle((12, 12, 36, 36), fill=(200, 30, 30))
    views = reference_views(im)
    assert len(views) == len(VIEWS) and all(v.size == (48, 48) for v in views)
    by = dict(zip(VIEWS, (np.asarray(v, np.int32) for v in views)))
    assert (by["clean"][0, 0] == 255).all() and (by["inverted"][0, 0] == 0).all()
    assert by["dark_ground"][0, 0].max() < 60 and (by["dark_ground"][24, 24] == [200, 30, 30]).all()
    assert by["mono_dark"][24, 24].max() < 60 and by["mono_light"][24, 24].min() > 200
    with pytest.raises(ValueError, match="unknown reference view"):
        reference_views(im, ("sepia",))


def test_a_logo_with_several_vectors_counts_once_at_its_nearest():
    e = np.eye(4, dtype=np.float32)
    gal = np.stack([e[0], e[1], e[2], e[3]])          # logo a: views 0 and 1; b: 2; c: 3
    labels = ["a", "a", "b", "c"]
    q = np.stack([e[1], e[2], (e[0] + e[2]) / np.sqrt(2)]).astype(np.float32)
    rep = retrieval_report(q, ["a", "b", "c"], gal, labels, ["a", "b", "c"], ks=(1, 2))
    assert rep["recall@1"] == pytest.approx(2 / 3, abs=1e-3) and rep["recall@2"] == pytest.approx(2 / 3, abs=1e-3)
    assert rep["gallery_vectors"] == 4 and rep["gallery_logos"] == 3
    assert rep["genuine"][0] == pytest.approx(0.0)     # its nearest view of a, not the far one
    assert list(rep["rank"]) == [0, 0, 2]                # c is behind a and b for the third


def test_recall_by_badge_size_splits_the_queries_by_their_side_on_the_photo():
    rep = {"rank": np.array([0, 3, 0, 9]), "genuine": np.array([0.1, 0.5, 0.2, 0.9]),
           "impostor": np.array([0.6, 0.4, 0.7, 0.3])}
    rows = {r["side_px"]: r for r in report_by_size(rep, np.array([10.0, 20.0, 70.0, 70.0]))}
    assert set(rows) == {"< 16", "16-24", ">= 64", "all"}          # empty bins are left out
    assert rows["< 16"]["recall@1"] == 1.0 and rows["16-24"]["recall@1"] == 0.0
    assert rows["16-24"]["recall@5"] == 1.0 and rows[">= 64"]["queries"] == 2
    assert rows[">= 64"]["recall@1"] == 0.5 and rows[">= 64"]["recall@5"] == 0.5
    assert rows["all"] == {"side_px": "all", "queries": 4, "recall@1": 0.5, "recall@5": 0.75,
                           "genuine_median": 0.35, "impostor_median": 0.5}


def test_low_resolution_views_lose_detail_but_keep_shape_and_range():
    import torch

    from logoscan.train.embedder import _low_resolution
    torch.manual_seed(0)
    x = torch.zeros(6, 3, 96, 96)
    x[:, :, ::2, :] = 1.0                                   # 1-px stripes: gone below 48 px
    assert torch.equal(_low_resolution(x, 0.0, (12, 48)), x)
    y = _low_resolution(x, 1.0, (12, 24))
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    assert float((y - 0.5).abs().max()) < 0.1                # every view blurred to grey


def test_training_on_real_photos_ships_threshold_probes(tmp_path, monkeypatch):
    data = make_real_photos(tmp_path / "real")
    out = tmp_path / "emb"
    cmd = [sys.executable, "jobs/train_embedder.py", "--set", f"out={out}", "--set", "backbone=tiny_cnn",
           "--set", "imagenet_init=false", "--set", "n_invented=12", "--set", "n_brands=10",
           "--set", "holdout=0.4", "--set", "views_per_class=3", "--set", "batch_size=8",
           "--set", "eval_queries_per_class=1", "--set", "workers=1", "--set", "max_steps=2",
           "--set", "max_minutes=null", "--set", f"real_data={data}", "--set", "real_heldout_makes=[kia]",
           "--set", "make_share=0.25", "--set", "badge_share=0.25", "--set", "instance_share=0.125",
           "--set", "badge_views=2", "--set", "crop_views=2", "--set", "lowres_p=0.5"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(r.stdout)
    assert m["real_zero_shot"]["queries"] == 4 and m["real_zero_shot"]["gallery_logos"] == 5
    assert m["real_zero_shot"]["by_size"][-1]["side_px"] == "all" and m["real_zero_shot"]["by_size"][-1]["queries"] == 4
    assert m["real_pool"]["per_batch"] == {"make": 2, "badge": 2, "instance": 1}
    model, cfg = load_artifact(str(out))
    probes = cfg["threshold_probes"]
    assert probes["vectors"].shape == (probes["count"], 128)
    assert set(probes["by_kind"]) == {"synthetic", "real_logo", "logo_free"} and probes["by_kind"]["real_logo"] == 1

    # a gallery's default threshold comes from the shipped probes: nothing is rendered
    import logoscan.synth.crops as crops

    def no_render(*a, **k):
        raise AssertionError("rendered a probe")
    monkeypatch.setattr(crops, "scene_view", no_render)
    gallery = probes["vectors"][:3] / np.linalg.norm(probes["vectors"][:3], axis=1, keepdims=True)
    cal = gallery_threshold(model, cfg, gallery, ["x", "y", "z"])
    assert cal["probe_source"] == "artifact" and cal["probes"] == probes["count"]
    # probes named like a gallery label are left out (that logo is no unknown to this gallery)
    named = probes["names"][0]
    assert gallery_threshold(model, cfg, gallery, [named])["probes"] == probes["count"] - 1


def test_a_gallery_with_views_returns_each_logo_once_at_its_nearest_view(sample, tmp_path):
    from logoscan.gallery import GalleryError, Matcher, build, reference_thumbnails
    from logoscan.models import default_artifact_path
    from logoscan.models.embedder import embed_crops
    model, cfg = load_artifact(default_artifact_path("embedder"))
    db = str(tmp_path / "views.db")
    meta = build(sample["references"], db, "v", model, cfg, views=("clean", "inverted", "mono_dark"))
    one = build(sample["references"], db, "one", model, cfg)
    assert meta["views"] == ["clean", "inverted", "mono_dark"] and meta["references"] == one["references"]
    assert meta["gallery_version"] != one["gallery_version"]
    with pytest.raises(GalleryError, match="views must start with 'clean'"):
        build(sample["references"], db, "bad", model, cfg, views=("inverted",))
    # a query that is the inverted view of a reference finds that logo first, and once
    import pyarrow.parquet as pq
    from logoscan.gallery import load_reference_crops
    table = pq.read_table(sample["references"])
    crops, _ = load_reference_crops(table, cfg["input_size"], cfg["crop_pad"])
    q = embed_crops(model, cfg, [reference_views(c, ("inverted",))[0] for c in crops[:4]])
    m = Matcher(db, "v")
    try:
        hits = m.search(q, top_k=3)
    finally:
        m.close()
    ids = table.column("logo_id").to_pylist()
    for i, h in enumerate(hits):
        assert h[0]["logo_id"] == ids[i] and h[0]["distance"] < 0.01
        assert len({x["logo_id"] for x in h}) == 3   # three different logos, not three views of one
    assert set(reference_thumbnails(db, "v", ids[:4])) == set(ids[:4])
