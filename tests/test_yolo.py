"""YOLO-format labelled photos: the loader refuses bad input by file and line, counts what is only
incomplete, splits held-out photos whole, and the detector trains on such a folder the way it
trains on the real-photo sets (a user's own labelled catalog photos)."""
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from logoscan import config_io
from logoscan.config_io import ConfigError
from logoscan.train.detector import DetectorTrainConfig, augment_photo, real_split
from logoscan.train.yolo import YoloFormatError, load_yolo, split_heldout

ROOT = Path(__file__).resolve().parents[1]


def make_yolo(root: Path, labels: dict[str, str | None], classes=("acme", "globex"), size=(80, 60)):
    """A dataset folder: one image per name; labels[name] is the label file's text (None: no file)."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    for name, text in labels.items():
        im = Image.new("RGB", size, (200, 200, 200))
        ImageDraw.Draw(im).rectangle((20, 15, 40, 35), fill=(200, 20, 20))
        im.save(root / "images" / f"{name}.jpg")
        if text is not None:
            (root / "labels" / f"{name}.txt").write_text(text)
    return root


def test_reads_boxes_and_reports_what_is_incomplete(tmp_path):
    root = make_yolo(tmp_path / "ds", {"a_1": "0 0.375 0.4167 0.25 0.3333\n1 0.5 0.5 0.1 0.1\n",
                                       "a_2": "", "a_3": None})
    (root / "labels" / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    ds = load_yolo(root)
    assert [it.image.name for it in ds.items] == ["a_1.jpg", "a_2.jpg"]      # a_3 has no label file
    a1 = ds.items[0]
    assert a1.classes == ("acme", "globex")
    np.testing.assert_allclose(a1.pixel_boxes(80, 60)[0], [20, 15, 40, 35], atol=0.05)
    assert len(ds.items[1].boxes) == 0                                       # labelled logo-free
    r = ds.report
    assert (r.images, r.used, r.boxes, r.empty_label_files) == (3, 2, 2, 1)
    assert r.images_without_labels == ("a_3.jpg",) and r.labels_without_image == ("ghost.txt",)
    text = "\n".join(r.lines())
    assert "1 images without a label file (skipped)" in text and "1 label files without an image" in text
    # the other reading of an unlabelled image: a logo-free photo
    ds2 = load_yolo(root, unlabelled="empty")
    assert len(ds2.items) == 3 and ds2.report.empty_label_files == 2


@pytest.mark.parametrize("line, msg", [
    ("0 0.5 0.5 0.1", "4 fields, expected 5"),
    ("0 0.5 0.5 0.1 0.1 0.9", "6 fields, expected 5"),
    ("0 1.5 0.5 0.1 0.1", "normalised to 0..1"),
    ("0 0.5 -0.1 0.1 0.1", "normalised to 0..1"),
    ("0 0.5 0.5 nan 0.1", "normalised to 0..1"),
    ("0 0.5 0.5 0 0.1", "empty box"),
    ("2 0.5 0.5 0.1 0.1", "class index 2 is not in classes.txt (2 classes)"),
    ("acme 0.5 0.5 0.1 0.1", "is not a class index"),
    ("0 0.5 0.5 0.1 x", "not a number"),
])
def test_refuses_a_bad_label_line_by_file_and_line(tmp_path, line, msg):
    root = make_yolo(tmp_path / "ds", {"p_1": "0 0.5 0.5 0.2 0.2\n", "p_2": f"1 0.5 0.5 0.2 0.2\n{line}\n"})
    with pytest.raises(YoloFormatError) as e:
        load_yolo(root)
    assert msg in str(e.value) and "p_2.txt:2" in str(e.value)


def test_refuses_a_folder_that_is_not_a_dataset(tmp_path):
    with pytest.raises(YoloFormatError, match="not a folder"):
        load_yolo(tmp_path / "missing")
    root = make_yolo(tmp_path / "ds", {"p_1": ""})
    (root / "classes.txt").unlink()
    with pytest.raises(YoloFormatError, match="no classes.txt"):
        load_yolo(root)
    (root / "classes.txt").write_text("a\na\n")
    with pytest.raises(YoloFormatError, match="listed twice"):
        load_yolo(root)
    with pytest.raises(ValueError, match="unlabelled"):
        load_yolo(root, unlabelled="guess")


def test_held_out_photos_are_never_trained_on(tmp_path):
    labels = {f"s_{i}": "0 0.5 0.5 0.2 0.2\n" for i in range(1, 21)}
    labels |= {f"t_{i}": "1 0.5 0.5 0.2 0.2\n" for i in range(1, 11)}
    labels["s_3"] = "0 0.5 0.5 0.2 0.2\n1 0.2 0.2 0.1 0.1\n"   # shows a held-out class too
    root = make_yolo(tmp_path / "ds", labels)
    ds = load_yolo(root)
    train, held = split_heldout(ds, heldout_classes=("globex",))
    assert {it.image.stem for it in held} == {"s_3", *(f"t_{i}" for i in range(1, 11))}
    assert not any("globex" in it.classes for it in train)
    train, held = split_heldout(ds, heldout_share=0.2)
    # per name group, the highest numbers form the block (s_10 sorts after s_9, not after s_1)
    assert {it.image.stem for it in held} == {"s_17", "s_18", "s_19", "s_20", "t_9", "t_10"}
    with pytest.raises(YoloFormatError, match="not in classes.txt"):
        split_heldout(ds, heldout_classes=("initech",))
    # the training job's split: train, a validation block, the held-out part, all disjoint
    cfg = config_io.build(DetectorTrainConfig, {"datasets": [{"path": str(root), "heldout_share": 0.2,
                                                              "val_share": 0.1}]})
    r = real_split(cfg)
    tr, v, h = ({it.image for it in r.train[0]}, {it.image for it in r.val}, {it.image for _, it in r.heldout})
    assert len(tr) + len(v) + len(h) == 30 and not (tr & v or tr & h or v & h)


def test_dataset_config_is_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['wieght'\] in datasets.0"):
        config_io.build(DetectorTrainConfig, {"datasets": [{"path": "x", "wieght": 2}]})
    with pytest.raises(ConfigError, match="weight must be ≥ 0"):
        config_io.build(DetectorTrainConfig, {"datasets": [{"path": "x", "weight": -1}]})
    with pytest.raises(ConfigError, match="heldout_share must be in"):
        config_io.build(DetectorTrainConfig, {"datasets": [{"path": "x", "heldout_share": 1}]})
    with pytest.raises(ConfigError, match="needs labelled photos"):
        config_io.build(DetectorTrainConfig, {"threshold_on": "real"})
    with pytest.raises(ConfigError, match="device must be 'auto', 'cpu' or 'cuda"):
        config_io.build(DetectorTrainConfig, {"device": "gpu"})
    assert config_io.build(DetectorTrainConfig, {"device": "cuda:1"}).device == "cuda:1"


def test_photo_augmentation_keeps_boxes_on_their_logos():
    rng = random.Random(3)
    im = np.full((120, 160, 3), 230, np.uint8)
    im[40:70, 50:100] = (20, 20, 220)                     # the "logo": a blue block
    box = np.array([[50, 40, 100, 70]], np.float32)
    for _ in range(40):
        out, b = augment_photo(rng, im, box)
        x0, y0, x1, y1 = (int(round(v)) for v in b[0])
        assert 0 <= x0 < x1 <= out.shape[1] and 0 <= y0 < y1 <= out.shape[0]
        blue = out[..., 2].astype(int) - out[..., 0].astype(int)
        inside = blue[y0 + 3:y1 - 3, x0 + 3:x1 - 3]
        ring = np.concatenate([blue[max(y0 - 6, 0):max(y0 - 2, 0), x0:x1].ravel(),
                               blue[y1 + 2:y1 + 6, x0:x1].ravel(),
                               blue[y0:y1, max(x0 - 6, 0):max(x0 - 2, 0)].ravel(),
                               blue[y0:y1, x1 + 2:x1 + 6].ravel()])
        assert inside.size and ring.size
        assert inside.mean() > ring.mean() + 25   # the box is still on the blue block, and tight


def test_detector_trains_on_a_yolo_folder(tmp_path):
    """A user's own labelled photos, in the mix the way the real-photo sets are: the artifact
    records the split, the validation photos are measured, the threshold is chosen on them."""
    labels = {f"cat_{i}": "0 0.375 0.4167 0.25 0.3333\n" for i in range(1, 13)}
    root = make_yolo(tmp_path / "mine", labels, size=(160, 120))
    cfg = {"datasets": [{"path": str(root), "weight": 1.0, "heldout_share": 0.25, "val_share": 0.25}],
           "synthetic_weight": 0.5, "onphoto_weight": 0.5, "threshold_on": "real",
           "imagenet_init": False, "n_invented": 10, "n_brands": 10, "max_steps": 2, "max_minutes": None,
           "batch_size": 2, "eval_scenes": 4, "workers": 0, "input_size": 160, "scene_px": [160, 200]}
    (tmp_path / "cfg.yaml").write_text(json.dumps(cfg))
    out = tmp_path / "det"
    r = subprocess.run([sys.executable, "jobs/train_detector.py", "--config", str(tmp_path / "cfg.yaml"),
                        "--set", f"out={out}"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(r.stdout)
    assert m["steps"] == 2 and m["real_val"]["photos"] == 2 and "AP50" in m["real_val"]
    saved = json.loads((out / "config.json").read_text())
    assert saved["train_config"]["datasets"][0]["path"] == str(root)
    assert "mine" in (out / "MODEL_CARD.md").read_text()


def test_a_packed_copy_leaves_held_out_photos_behind_and_keeps_boxes_on_their_logos(tmp_path):
    """jobs/pack_yolo.py (the real photos' trip to a GPU machine): held-out photos stay behind,
    the validation block is the same one, and a cropped window still has its box on the logo."""
    from jobs.pack_yolo import main as pack
    labels = {f"s_{i}": "0 0.375 0.4167 0.25 0.3333\n" for i in range(1, 21)}
    labels["s_5"] = "1 0.375 0.4167 0.25 0.3333\n"            # a held-out class
    root = make_yolo(tmp_path / "cars", labels)              # the red block is where the box says
    src = {"path": str(root), "heldout_classes": ["globex"], "heldout_share": 0.2, "val_share": 0.25}
    (tmp_path / "cfg.yaml").write_text(json.dumps({"datasets": [src]}))
    assert pack(["--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "packed"),
                 "--crop", "cars=64", "--max-side", "48"]) == 0
    packed = tmp_path / "packed" / "cars"
    info = json.loads((packed / "pack.json").read_text())
    assert info["photos"] == 15 and info["held_out_left_out"] == 5     # s_5 and s_17..s_20
    ds = load_yolo(packed)
    assert {it.image.stem for it in ds.items} == {f"s_{i}" for i in range(1, 17)} - {"s_5"}
    # the same validation block as training on the original folder takes
    before = real_split(config_io.build(DetectorTrainConfig, {"datasets": [src]}))
    after = real_split(config_io.build(DetectorTrainConfig, {"datasets": [{"path": str(packed), "val_share": 0.25}]}))
    assert {it.image.stem for it in after.val} == {it.image.stem for it in before.val}
    for it in ds.items:
        with Image.open(it.image) as im:
            rgb = np.asarray(im.convert("RGB")).astype(int)
        assert max(im.size) <= 48
        x0, y0, x1, y1 = (int(round(v)) for v in it.pixel_boxes(im.width, im.height)[0])
        red = rgb[..., 0] - rgb[..., 2]
        assert red[y0 + 1:y1 - 1, x0 + 1:x1 - 1].mean() > 100 > red.mean()   # the box is on the red block
    with pytest.raises(SystemExit, match="no dataset named"):
        pack(["--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "p2"), "--crop", "bikes=64"])
