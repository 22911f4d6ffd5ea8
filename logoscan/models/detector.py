"""Class-agnostic logo detector: torchvision FCOS on an EfficientNet-Lite (0, 1 or 2) + FPN backbone.

FCOS is anchor-free (one point per location, no anchor-shape tuning for logos of every aspect
ratio), and torchvision's implementation carries the resize-in / boxes-back-to-original-pixels
transform, focal + GIoU losses and NMS. The ImageNet-initialised backbone is what makes training
on 2 CPU cores feasible (see ../shared/STACK.md).
"""
from __future__ import annotations

import contextlib
import math
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import nms
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

from logoscan.models.artifact import register_model
from logoscan.models.backbone import VARIANTS, EfficientNetLite

LOGO_LABEL = 1  # FCOS counts classes including background; ours is the one class "logo"


class LiteFPN(nn.Module):
    def __init__(self, fpn_channels: int = 64, variant: str = "lite0"):
        super().__init__()
        self.body = EfficientNetLite(variant)
        self.fpn = FeaturePyramidNetwork(list(self.body.feature_channels), fpn_channels,
                                         extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels))
        self.out_channels = fpn_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self.body.features(x.contiguous(memory_format=torch.channels_last))
        return self.fpn(OrderedDict(zip(("p3", "p4", "p5"), feats)))


def freeze_early(model: FCOS, n_blocks: int | None = 3) -> None:
    """Freeze the stem and the first ``n_blocks`` MBConv blocks (None: every stride ≤ 4 block,
    3 in Lite0, 4 in Lite1/2): the costliest part of the backward pass on CPU, and the most
    generic ImageNet features."""
    body = model.backbone.body
    early = body.early_modules() if n_blocks is None else [body._conv_stem, body._bn0, *body._blocks[:n_blocks]]
    for m in early:
        m.requires_grad_(False)
        m.eval()


def build_fcos(input_size: int = 384, fpn_channels: int = 64, score_thresh: float = 0.3,
               nms_thresh: float = 0.5, detections_per_img: int = 20, variant: str = "lite0") -> FCOS:
    sizes = ((16,), (32,), (64,), (128,), (256,))
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=((1.0,),) * len(sizes))
    return FCOS(LiteFPN(fpn_channels, variant), num_classes=2, min_size=input_size, max_size=input_size,
                image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], anchor_generator=anchors,
                score_thresh=score_thresh, nms_thresh=nms_thresh,
                detections_per_img=detections_per_img, topk_candidates=200)


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """In place: the detector's transform expects images resized by ``detect_images``."""
    if isinstance(model, FCOS) and type(model.transform) is GeneralizedRCNNTransform:
        model.transform.__class__ = PresizedTransform
    return model


def arch_name(variant: str) -> str:
    """The artifact's ``arch`` for a backbone variant: ``fcos_lite0`` (every shipped detector so
    far), ``fcos_lite1``, ``fcos_lite2``."""
    return f"fcos_{variant}"


def _register(variant: str) -> None:
    register_model(arch_name(variant), prepare_for_inference=prepare_for_inference)(
        lambda **kw: build_fcos(**kw, variant=variant))


for _v in VARIANTS:
    _register(_v)


class PresizedTransform(GeneralizedRCNNTransform):
    """FCOS's transform for images that ``detect_images`` has already resized to the input size:
    it normalises and batches them, and does not resize them again (a second resize by a factor
    of ~1.003 from rounding would move the boxes by a pixel or two)."""

    def resize(self, image, target=None):
        return image, target


def set_input_size(model: FCOS, size: int) -> FCOS:
    """In place: run the detector at ``size`` px (longest side) instead of its trained size. FCOS is
    fully convolutional, so any size works; the boxes come back in the image's pixels either way."""
    model.transform.min_size, model.transform.max_size = (int(size),), int(size)
    return model


@contextlib.contextmanager
def flushed_denormals(enabled: bool = True):
    """Within the block, treat subnormal floats as zero on the CPU, then turn it back off. A
    detector fine-tuned on real photos (detector-v3) produces subnormal activations that made its
    CPU inference 1.5x slower than the same architecture's (7.0 against 10.6 images/s at 320 px);
    outputs differ by < 1e-37. Scoped, not process-wide: the flag is global CPU state (hypothesis,
    for one, refuses to run under it)."""
    if enabled:
        torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if enabled:
            torch.set_flush_denormal(False)


def native_bf16(device: str) -> bool:
    """Whether ``device`` computes bfloat16 natively (CUDA with bf16; a CPU with AVX512-BF16 or
    AMX). Elsewhere bf16 is emulated and slower than fp32."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # pragma: no cover - an older torch without the probes
        return False


def amx(device: str) -> bool:
    """Whether ``device`` is a CPU with AMX tiles (the matrix units where bf16 convolutions pay)."""
    try:
        return torch.device(device).type == "cpu" and bool(torch.cpu._is_amx_tile_supported())
    except AttributeError:  # pragma: no cover - an older torch without the probe
        return False


def resolve_precision(requested: str, device: str) -> str:
    """``auto`` → bf16 on a CPU with AMX, else fp32; fp32/bf16 as asked. On a CPU with AVX512-BF16
    but no AMX, bf16 autocast was slower than fp32 for detector-v4 at 416 px, 2 threads, batches of
    4 (79 against 65 ms per image, alternating runs; docs/bench/detector.md), though an earlier
    session measured it faster; on an H200 it was slower at batches of 8, 32 and 64, for
    detector-v3 and -v4 (not profiled). fp32 is also what the thresholds were measured with."""
    if requested == "auto":
        return "bf16" if amx(device) else "fp32"
    return requested


def images_to_tensors(images: list[np.ndarray], device: str = "cpu") -> list[torch.Tensor]:
    return [torch.from_numpy(np.require(im, np.uint8, ['C', 'W'])).to(device).permute(2, 0, 1).float().div_(255)
            for im in images]


def _input_scale(model: FCOS, h: int, w: int) -> float:
    """The scale FCOS's own transform would resize an h×w image by (GeneralizedRCNNTransform)."""
    t = model.transform
    return min(float(t.min_size[-1]) / min(h, w), float(t.max_size) / max(h, w))


def resized_tensors(model: FCOS, images: list[np.ndarray], device: str = "cpu") -> tuple[list[torch.Tensor], list]:
    """Each image resized to the detector's input size *before* it is normalised, and the factors
    that take boxes back to its pixels. FCOS's own transform normalises the full-size image and
    then resizes it; both are linear, so resizing first gives the same input (the same boxes) for
    a fraction of the arithmetic on an 800×800 photo (with ``PresizedTransform``, which then
    skips its own resize). The uint8 image is moved to the device
    before it is widened to float (a quarter of the bytes over PCIe on a GPU)."""
    out, back = [], []
    for im in images:
        h, w = im.shape[:2]
        s = _input_scale(model, h, w)
        # what the transform's resize gives; at least 1 px (a 1 x 50000 image would give 0 rows)
        size = (max(1, int(math.floor(h * s))), max(1, int(math.floor(w * s))))
        t = torch.from_numpy(np.require(im, np.uint8, ['C', 'W'])).to(device).permute(2, 0, 1)[None].float()
        if size != (h, w):
            t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
        out.append(t[0].div_(255))
        back.append(torch.tensor([w / size[1], h / size[0]] * 2, device=device))
    return out, back


@torch.inference_mode()
def detect_images(model: FCOS, images: list[np.ndarray], score_thresh: float, device: str = "cpu",
                  batch_size: int = 8, precision: str = "fp32") -> list[tuple[np.ndarray, np.ndarray]]:
    """HWC uint8 RGB images → per image (boxes [K,4] x1y1x2y2 in original pixels, scores [K]).
    ``precision`` "bf16" runs the model under bfloat16 autocast (boxes and scores come back as
    float32)."""
    out = []
    device_type = torch.device(device).type
    presized = isinstance(model.transform, PresizedTransform)  # loaded with inference=True
    for i in range(0, len(images), batch_size):
        if presized:
            tensors, back = resized_tensors(model, images[i:i + batch_size], device)
        else:  # the model as saved: its transform resizes the full-size image
            tensors = images_to_tensors(images[i:i + batch_size], device)
            back = [torch.ones(4, device=device)] * len(tensors)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"), \
                flushed_denormals(device_type == "cpu"):
            preds = model(tensors)
        for p, f in zip(preds, back):
            keep = (p["labels"] == LOGO_LABEL) & (p["scores"] >= score_thresh)
            out.append(((p["boxes"][keep].float() * f).cpu().numpy().astype(np.float32),
                        p["scores"][keep].float().cpu().numpy().astype(np.float32)))
    return out


def tile_windows(h: int, w: int, grid: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """A ``grid`` × ``grid`` set of windows (x0, y0, x1, y1) covering an h×w image, neighbours
    overlapping by ``overlap`` of a window's side, so a logo narrower than the overlap lies whole
    inside at least one window. ``grid`` 1: the whole image."""
    if grid <= 1:
        return [(0, 0, w, h)]

    def starts(n: int) -> list[tuple[int, int]]:
        side = min(n, max(1, math.ceil(n / (grid - (grid - 1) * overlap))))
        step = (n - side) / (grid - 1)
        return [(round(i * step), round(i * step) + side) for i in range(grid)]
    return [(x0, y0, x1, y1) for y0, y1 in starts(h) for x0, x1 in starts(w)]


def tile_views(images: list[np.ndarray], grid: int, overlap: float) -> tuple[list[np.ndarray], list[tuple]]:
    """Each image whole, then its ``tile_windows``: the views and, per view, (image index, window)."""
    views, where = [], []
    for k, im in enumerate(images):
        h, w = im.shape[:2]
        for win in [(0, 0, w, h), *(tile_windows(h, w, grid, overlap) if grid > 1 else [])]:
            x0, y0, x1, y1 = win
            views.append(im[y0:y1, x0:x1])
            where.append((k, win))
    return views, where


def merge_tiles(found: list[tuple[np.ndarray, np.ndarray]], where: list[tuple], shapes: list[tuple],
                nms_iou: float = 0.5, max_px: float = 0.0, tile_thresh: float = 0.0, keep: int = 20,
                edge_px: float = 2.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image, the whole image's boxes and its windows' boxes (moved into the image's pixels)
    merged with NMS. A window's box is dropped when it touches one of the window's inner edges (a
    cut part of a logo that another view sees whole), when its longest side is over ``max_px``
    (0: no limit; large logos are the whole image's to find), or when it scores under
    ``tile_thresh``."""
    boxes = [[] for _ in shapes]
    scores = [[] for _ in shapes]
    for (k, (x0, y0, x1, y1)), (b, s) in zip(where, found):
        h, w = shapes[k][:2]
        if len(b) and (x0, y0, x1, y1) != (0, 0, w, h):
            drop = s < tile_thresh
            if x0 > 0:
                drop |= b[:, 0] <= edge_px
            if y0 > 0:
                drop |= b[:, 1] <= edge_px
            if x1 < w:
                drop |= b[:, 2] >= (x1 - x0) - edge_px
            if y1 < h:
                drop |= b[:, 3] >= (y1 - y0) - edge_px
            if max_px:
                drop |= np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) > max_px
            b, s = b[~drop] + np.array([x0, y0, x0, y0], np.float32), s[~drop]
        boxes[k].append(b)
        scores[k].append(s)
    out = []
    for bs, ss in zip(boxes, scores):
        b = torch.from_numpy(np.concatenate(bs).reshape(-1, 4).astype(np.float32))
        s = torch.from_numpy(np.concatenate(ss).astype(np.float32))
        kept = nms(b, s, nms_iou)[:keep]
        out.append((b[kept].numpy(), s[kept].numpy()))
    return out


def detect_tiled(model: FCOS, images: list[np.ndarray], score_thresh: float, grid: int = 1,
                 overlap: float = 0.25, device: str = "cpu", batch_size: int = 8, precision: str = "fp32",
                 max_px: float = 0.0, tile_thresh: float = 0.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``detect_images`` on each whole image and on ``grid`` × ``grid`` overlapping windows of it,
    each window resized to the detector's input size like a whole image (so a small logo reaches
    the model ~``grid`` times larger), merged per image by ``merge_tiles``. Costs 1 + grid² model
    calls per image. Slicing-aided inference in the manner of SAHI (Akyon et al., 2022), written
    here because the detector's own batching, resizing and precision are what the sweep runs."""
    if grid <= 1:
        return detect_images(model, images, score_thresh, device, batch_size, precision)
    views, where = tile_views(images, grid, overlap)
    found = detect_images(model, views, score_thresh, device, batch_size, precision)
    return merge_tiles(found, where, [im.shape for im in images], max_px=max_px, tile_thresh=tile_thresh,
                       keep=model.detections_per_img)
