"""Checkpointing and time-budgeted loops shared by the training jobs."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from logoscan.log import get_logger

log = get_logger(__name__)


def save_checkpoint(folder: Path, modules: dict[str, torch.nn.Module], optimizer, state: dict):
    folder.mkdir(parents=True, exist_ok=True)
    for name, m in modules.items():
        save_file({k: v.detach().contiguous() for k, v in m.state_dict().items()},
                  str(folder / f"{name}.safetensors.tmp"))
        (folder / f"{name}.safetensors.tmp").replace(folder / f"{name}.safetensors")
    # optimizer state is tensors + numbers: loadable with weights_only=True
    torch.save(optimizer.state_dict(), folder / "optimizer.pt.tmp")
    (folder / "optimizer.pt.tmp").replace(folder / "optimizer.pt")
    (folder / "state.json").write_text(json.dumps(state))


def load_checkpoint(folder: Path, modules: dict[str, torch.nn.Module], optimizer) -> dict | None:
    if not (folder / "state.json").is_file():
        return None
    for name, m in modules.items():
        m.load_state_dict(load_file(str(folder / f"{name}.safetensors")))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    state = json.loads((folder / "state.json").read_text())
    log.info("checkpoint.resumed", folder=str(folder), **state)
    return state


def cosine_lr(base: float, frac: float, warmup: float = 0.03) -> float:
    if frac < warmup:
        return base * frac / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min((frac - warmup) / (1 - warmup), 1.0)))


class Budget:
    """Training progress measured in steps or in minutes, whichever is set (steps win)."""

    def __init__(self, max_steps: int | None, max_minutes: float | None, elapsed_s: float = 0.0):
        self.max_steps, self.max_s = max_steps, (max_minutes or 0) * 60
        self.start = time.time() - elapsed_s

    def elapsed(self) -> float:
        return time.time() - self.start

    def frac(self, step: int) -> float:
        if self.max_steps:
            return step / self.max_steps
        return self.elapsed() / self.max_s if self.max_s else 1.0

    def done(self, step: int) -> bool:
        return self.frac(step) >= 1.0


def job_parser(doc: str | None):
    """The flags every training job takes: --config FILE, --set key=value, --no-resume."""
    import argparse
    ap = argparse.ArgumentParser(description=doc)
    add_job_flags(ap)
    return ap


def add_job_flags(ap) -> None:
    ap.add_argument("--config", help="YAML/TOML file with the training config's keys")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. --set max_minutes=5")
    ap.add_argument("--no-resume", action="store_true", help="ignore <out>/checkpoint")


def config_from(cls, saved: dict):
    """A training config dataclass from the ``train_config`` an artifact saved (JSON: lists back
    to tuples, nested configs such as the detector's ``datasets`` back to dataclasses; keys this
    version no longer knows are ignored)."""
    from dataclasses import fields

    from logoscan import config_io
    known = {f.name for f in fields(cls)}
    return config_io.build(cls, {k: v for k, v in saved.items() if k in known})


def emit_report(report: str, path: str = "") -> None:
    """Print a benchmark's markdown report, and write it to ``path`` when one is given."""
    print(report)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(report)


DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"  # a training config's ``device``


def train_device(requested: str) -> str:
    """``auto``: CUDA where torch sees it, else the CPU; ``cuda[:N]`` without CUDA stops clearly."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"device: {requested!r} asked for, but torch sees no CUDA device")
    return requested


def device_words(device: str) -> str:
    if device.startswith("cuda"):
        return f"GPU ({torch.cuda.get_device_name(torch.device(device))})"
    return f"CPU ({len(os.sched_getaffinity(0))} cores)"
