"""Logo embedder: backbone → global average pool → linear → unit vector."""
from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from logoscan.models.artifact import register_model
from logoscan.models.backbone import EfficientNetLite0, EfficientNetLite1, EfficientNetLite2


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


BACKBONES = {"efficientnet_lite0": EfficientNetLite0, "efficientnet_lite1": EfficientNetLite1,
             "efficientnet_lite2": EfficientNetLite2, "tiny_cnn": TinyCNN}


class PooledBackbone(nn.Module):
    """A third-party network that returns pooled [B, C] features, seen as a [B, C, 1, 1] map."""

    def __init__(self, net: nn.Module, out_channels: int):
        super().__init__()
        self.net, self.out_channels = net, out_channels

    def forward(self, x):
        f = self.net(x)
        return f[:, :, None, None] if f.dim() == 2 else f


def _torchvision(name: str) -> nn.Module:
    """torchvision classification model without its classifier; weights=None (no download)."""
    import torchvision
    net = torchvision.models.get_model(name, weights=None)
    for attr in ("fc", "classifier", "head", "heads"):
        if hasattr(net, attr):
            old = getattr(net, attr)
            lin = [m for m in old.modules() if isinstance(m, nn.Linear)] if isinstance(old, nn.Module) else []
            if lin:
                setattr(net, attr, nn.Identity())
                return PooledBackbone(net, lin[0].in_features)
    raise ValueError(f"torchvision model {name!r}: no classifier head found to remove")


def make_backbone(spec: str) -> nn.Module:
    """``efficientnet_lite0`` / ``_lite1`` / ``_lite2`` | ``tiny_cnn`` | ``torchvision:<name>`` (e.g. resnet50,
    convnext_tiny) | ``timm:<name>`` | ``open_clip:<name>`` (its image tower); the last two need
    those packages installed. Weights come from the artifact, or at training time from a local
    file (``load_backbone_weights``); nothing is downloaded."""
    if spec in BACKBONES:
        return BACKBONES[spec]()
    kind, _, name = spec.partition(":")
    if kind == "torchvision":
        return _torchvision(name)
    if kind == "timm":
        import timm
        net = timm.create_model(name, pretrained=False, num_classes=0)
        return PooledBackbone(net, net.num_features)
    if kind == "open_clip":
        import open_clip
        model = open_clip.create_model(name, pretrained=None)
        return PooledBackbone(model.visual, model.visual.output_dim)
    raise ValueError(f"unknown backbone {spec!r}: use one of {sorted(BACKBONES)}, "
                     "torchvision:<name>, timm:<name> or open_clip:<name>")


def load_backbone_weights(backbone: nn.Module, path: str) -> tuple[int, int]:
    """Load a user's pretrained weights (a state dict as .safetensors, or .pt/.pth read with
    ``weights_only=True``) into a backbone, local path or s3://. Keys of a classifier head, and
    a leading ``module.``/``visual.``/``net.`` prefix, are tolerated. Returns (loaded, expected)."""
    from logoscan import storage
    data = storage.read_bytes(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load as load_st
        state = load_st(data)
    else:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)  # no unpickling of code
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    target = backbone.net if isinstance(backbone, PooledBackbone) else backbone
    own = target.state_dict()
    fixed = {}
    for k, v in state.items():
        for pre in ("module.", "visual.", "net.", ""):
            if k.startswith(pre) and k[len(pre):] in own and own[k[len(pre):]].shape == v.shape:
                fixed[k[len(pre):]] = v
                break
    if not fixed:
        raise ValueError(f"{path}: no tensor matches the backbone's parameters (wrong model?)")
    target.load_state_dict(fixed, strict=False)
    return len(fixed), len(own)


class LogoEmbedder(nn.Module):
    def __init__(self, backbone: str = "efficientnet_lite0", embed_dim: int = 128):
        super().__init__()
        self.backbone = make_backbone(backbone)
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
