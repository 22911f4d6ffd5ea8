"""Logo embedder: backbone → global average pool → linear → unit vector."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from logoscan.models.artifact import register_model
from logoscan.models.backbone import EfficientNetLite0


class TinyCNN(nn.Module):
    """A few-conv backbone, for tests of the training entrypoint only."""

    out_channels = 64

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, 2, 1), nn.ReLU())

    def forward(self, x):
        return self.net(x)


BACKBONES = {"efficientnet_lite0": EfficientNetLite0, "tiny_cnn": TinyCNN}


class LogoEmbedder(nn.Module):
    def __init__(self, backbone: str = "efficientnet_lite0", embed_dim: int = 128):
        super().__init__()
        self.backbone = BACKBONES[backbone]()
        self.head = nn.Linear(self.backbone.out_channels, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x).mean(dim=(2, 3))
        return F.normalize(self.head(f), dim=1)


@register_model("logo_embedder")
def _logo_embedder(**kw) -> LogoEmbedder:
    return LogoEmbedder(**kw)


def square_crop(img: Image.Image, box: tuple[float, float, float, float], pad: float,
                size: int, fill=(255, 255, 255)) -> Image.Image:
    """Square crop centred on ``box`` (x1, y1, x2, y2), side = longest box side × (1 + pad),
    filled with ``fill`` outside the image, resized to ``size``. Used the same way in training,
    in the gallery (box = the whole reference image) and in the sweep (box = a detection)."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    side = max(x2 - x1, y2 - y1, 1.0) * (1 + pad)
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    s = max(int(round(side)), 1)
    canvas = Image.new("RGB", (s, s), fill)
    region = img.crop((max(left, 0), max(top, 0), min(left + s, img.width), min(top + s, img.height)))
    canvas.paste(region, (max(-left, 0), max(-top, 0)))
    return canvas.resize((size, size), Image.BILINEAR)


def to_tensor(crops: list[Image.Image], mean, std) -> torch.Tensor:
    arr = np.stack([np.asarray(c.convert("RGB"), dtype=np.float32) for c in crops]) / 255.0
    t = torch.from_numpy(arr).permute(0, 3, 1, 2)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return ((t - m) / s).contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def embed_crops(model: nn.Module, config: dict, crops: list[Image.Image], batch_size: int = 64,
                device: str = "cpu") -> np.ndarray:
    """Embed already-cropped PIL images (size = config['input_size']) → float32 [N, D] unit rows."""
    pre = config["preprocess"]
    out = []
    for i in range(0, len(crops), batch_size):
        x = to_tensor(crops[i:i + batch_size], pre["mean"], pre["std"]).to(device)
        out.append(model(x).float().cpu().numpy())
    if not out:
        return np.zeros((0, config["arch_args"]["embed_dim"]), np.float32)
    return np.concatenate(out).astype(np.float32)
