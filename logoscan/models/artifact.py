"""Save and load model artifacts (safetensors only — never pickles).

An artifact is a folder (local path or ``s3://`` prefix) holding:
  config.json        architecture name + its arguments, preprocessing, version
  model.safetensors  the weights
  MODEL_CARD.md      how it was made and what was measured (optional at load time)
  probes.safetensors an embedder's threshold probes (optional; see ``save_probes``)

Architectures are registered by name, timm-style, so the config is plain data.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from logoscan import storage

_REGISTRY: dict[str, Callable[..., torch.nn.Module]] = {}
_INFERENCE: dict[str, Callable[[torch.nn.Module], Any]] = {}  # arch -> its in-place inference set-up


def register_model(name: str, prepare_for_inference: Callable[[torch.nn.Module], Any] | None = None):
    """Register an architecture's builder under ``name`` (config.json's ``arch``), with what
    ``load_artifact(inference=True)`` does to it after folding batch norms, if anything."""
    def deco(fn):
        _REGISTRY[name] = fn
        if prepare_for_inference is not None:
            _INFERENCE[name] = prepare_for_inference
        return fn

    return deco


def build_model(config: dict[str, Any]) -> torch.nn.Module:
    # the architectures register themselves when logoscan.models (the package) is imported,
    # which any import of this module does first
    arch = config["arch"]
    if arch not in _REGISTRY:
        raise ValueError(f"unknown model arch {arch!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[arch](**config.get("arch_args", {}))


def default_artifact_path(kind: str) -> str:
    """Folder of the default artifact shipped inside the package (``detector`` or ``embedder``)."""
    return str(Path(__file__).resolve().parents[1] / "weights" / kind)


PROBES_FILE = "probes.safetensors"


def save_probes(folder: str | os.PathLike, vectors) -> None:
    """An embedder's threshold probes: embeddings of unknown logos and logo-free crops measured when
    it was trained (``config.json``'s ``threshold_probes`` names them), so that a gallery's default
    threshold is measured without rendering anything (`thresholds.gallery_threshold`)."""
    save_file({"vectors": torch.as_tensor(vectors).to(torch.float16).contiguous()}, str(Path(folder, PROBES_FILE)))


def save_artifact(model: torch.nn.Module, config: dict[str, Any], folder: str | os.PathLike,
                  card: str | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if card is not None:
        (folder / "MODEL_CARD.md").write_text(card)
    return folder


def _local_copy(uri: str) -> tuple[str, str | None]:
    """Return a local folder for ``uri`` (downloading an s3:// artifact into a temp dir)."""
    if not storage.is_s3(uri):
        return uri, None
    tmp = tempfile.mkdtemp(prefix="logoscan-artifact-")
    for name in ("config.json", "model.safetensors", PROBES_FILE):
        try:
            data = storage.read_bytes(uri.rstrip("/") + "/" + name)
        except FileNotFoundError:
            if name == PROBES_FILE:
                continue  # optional
            raise
        Path(tmp, name).write_bytes(data)
    return tmp, tmp


def load_artifact(uri: str, device: str = "cpu", inference: bool = False) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model in eval mode, and its config. ``inference=True`` prepares it for the sweep: its
    BatchNorms folded into the convolutions, and a detector's transform expecting the images
    ``detect_images`` resizes first. The same outputs up to float rounding, faster; it can no longer
    be trained."""
    folder, tmp = _local_copy(uri)
    try:
        cfg_path = Path(folder, "config.json")
        weights = Path(folder, "model.safetensors")
        if not cfg_path.is_file() or not weights.is_file():
            raise FileNotFoundError(
                f"model artifact {uri!r} must hold config.json and model.safetensors")
        config = json.loads(cfg_path.read_text())
        model = build_model(config)
        model.load_state_dict(load_file(str(weights), device="cpu"), strict=True)
        probes = Path(folder, PROBES_FILE)
        if "threshold_probes" in config and probes.is_file():
            config["threshold_probes"]["vectors"] = load_file(str(probes))["vectors"].float().numpy()
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    model.eval()
    if inference:
        from logoscan.models.backbone import fold_batchnorm
        fold_batchnorm(model)
        if config["arch"] in _INFERENCE:
            _INFERENCE[config["arch"]](model)
    model.to(device)
    return model, config
