"""Model artifacts: a folder with config.json + model.safetensors (+ MODEL_CARD.md)."""
from logoscan.models.artifact import build_model, load_artifact, save_artifact, default_artifact_path

__all__ = ["build_model", "load_artifact", "save_artifact", "default_artifact_path"]
