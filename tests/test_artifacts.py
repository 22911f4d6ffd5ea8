"""Model artifacts: safetensors + config.json, from a folder or s3://; clear errors otherwise."""
from pathlib import Path

import pytest
import torch

from logoscan.models import default_artifact_path, load_artifact


def test_shipped_artifacts_have_cards_and_fit_the_size_budget():
    for kind in ("detector", "embedder"):
        folder = Path(default_artifact_path(kind))
        assert (folder / "MODEL_CARD.md").read_text().count("jobs/train_") >= 1
        assert (folder / "model.safetensors").stat().st_size < 50 * 2**20


def test_artifact_loads_from_s3(s3):
    s3.create_bucket(Bucket="models")
    src = Path(default_artifact_path("embedder"))
    for name in ("config.json", "model.safetensors"):
        s3.upload_file(str(src / name), "models", f"embedder/v1/{name}")
    remote, cfg = load_artifact("s3://models/embedder/v1")
    local, _ = load_artifact(str(src))
    x = torch.randn(2, 3, cfg["input_size"], cfg["input_size"])
    with torch.inference_mode():
        assert torch.allclose(remote(x), local(x))


def test_folder_without_weights_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="config.json and model.safetensors"):
        load_artifact(str(tmp_path))
