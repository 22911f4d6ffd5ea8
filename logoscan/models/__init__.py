"""Model artifacts: a folder with config.json + model.safetensors (+ MODEL_CARD.md).

Importing the package registers the architectures (detector, embedder): each module registers
itself with ``artifact.register_model``; the registry never imports them back."""
from logoscan.models import detector, embedder  # noqa: F401 - registers the architectures
from logoscan.models.artifact import build_model, default_artifact_path, load_artifact, save_artifact

__all__ = ["build_model", "load_artifact", "save_artifact", "default_artifact_path"]
