"""The real training entrypoints, end to end on CPU with tiny settings (open_clip's 'synthetic'
idea): they write a loadable artifact with a model card, and resume from their checkpoint."""
import json
import subprocess
import sys
from pathlib import Path

from logoscan.models import load_artifact

TINY_EMB = ["--set", "backbone=tiny_cnn", "--set", "imagenet_init=false", "--set", "n_invented=12",
            "--set", "n_brands=10", "--set", "holdout=0.4", "--set", "views_per_class=3",
            "--set", "batch_size=8", "--set", "eval_queries_per_class=1", "--set", "workers=1",
            "--set", "checkpoint_every=2"]


def _train(kind, out, *extra):
    cmd = [sys.executable, f"jobs/train_{kind}.py", "--set", f"out={out}", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_train_embedder_writes_artifact_and_resumes(tmp_path):
    out = tmp_path / "emb"
    m = _train("embedder", out, *TINY_EMB, "--set", "max_steps=2", "--set", "max_minutes=null")
    assert m["steps"] == 2 and m["zero_shot_test"]["classes"] == 4
    assert {"config.json", "model.safetensors", "MODEL_CARD.md"} <= {p.name for p in out.iterdir()}
    model, cfg = load_artifact(str(out))
    assert cfg["kind"] == "embedder" and 0 < cfg["default_threshold"] < 2
    assert "jobs/train_embedder.py" in (out / "MODEL_CARD.md").read_text()
    assert m["device"].startswith("CPU") or m["device"].startswith("GPU")  # device: auto
    m2 = _train("embedder", out, *TINY_EMB, "--set", "max_steps=4", "--set", "max_minutes=null")
    assert m2["steps"] == 4  # continued from the step-2 checkpoint, not from zero


def test_train_embedder_with_text_hard_negatives(tmp_path):
    """The full recipe: wordmark families, m-per-class batches with text-similar classes, pair loss."""
    out = tmp_path / "emb-hn"
    m = _train("embedder", out, *TINY_EMB, "--set", "n_families=5", "--set", "m_per_class=2",
               "--set", "hard_share=1.0", "--set", "hard_weight=1.0", "--set", "max_steps=2",
               "--set", "max_minutes=null")
    assert m["steps"] == 2
    assert m["train_classes_with_text_neighbours"] >= 6  # 3 training families of 2-4 similar names
    assert m["zero_shot_text_similar"]["classes"] >= 2   # the held-out families
    card = (out / "MODEL_CARD.md").read_text()
    assert "text-similar hard negatives" in card and "2 views per class" in card


def test_train_detector_writes_artifact(tmp_path):
    out = tmp_path / "det"
    m = _train("detector", out, "--set", "imagenet_init=false", "--set", "n_invented=10", "--set", "n_brands=10",
               "--set", "max_steps=1", "--set", "max_minutes=null", "--set", "batch_size=2",
               "--set", "eval_scenes=4", "--set", "workers=0", "--set", "input_size=160",
               "--set", "scene_px=[160,200]", "--set", "backbone=lite1")
    assert m["steps"] == 1 and "AP50" in m["eval"]
    model, cfg = load_artifact(str(out))
    assert cfg["kind"] == "detector" and 0 < cfg["score_thresh"] < 1
    assert cfg["arch"] == "fcos_lite1" and "EfficientNet-Lite1" in (out / "MODEL_CARD.md").read_text()


def test_training_configs_refuse_a_bad_device_or_backbone():
    import pytest
    import torch

    from logoscan.train.common import train_device
    from logoscan.train.detector import DetectorTrainConfig
    from logoscan.train.embedder import EmbedderTrainConfig
    for make in (DetectorTrainConfig, EmbedderTrainConfig):
        with pytest.raises(ValueError, match="device must be"):
            make(device="gpu")
    with pytest.raises(ValueError, match="backbone must be one of"):
        DetectorTrainConfig(backbone="lite7")
    for bad in ({"lowres_p": 1.5}, {"lowres_px": (2, 40)}, {"lowres_px": (48, 12)}, {"lowres_px": (12, 200)}):
        with pytest.raises(ValueError, match="lowres_p must be"):
            EmbedderTrainConfig(**bad)
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA device"):
            train_device("cuda")
    assert train_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
