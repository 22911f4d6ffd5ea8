"""Class-agnostic logo detector: torchvision FCOS on an EfficientNet-Lite0 + FPN backbone.

FCOS is anchor-free (one point per location, no anchor-shape tuning for logos of every aspect
ratio), and torchvision's implementation carries the resize-in / boxes-back-to-original-pixels
transform, focal + GIoU losses and NMS. The ImageNet-initialised backbone is what makes training
on 2 CPU cores feasible (see ../shared/STACK.md).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

from logoscan.models.artifact import register_model
from logoscan.models.backbone import EfficientNetLite0

LOGO_LABEL = 1  # FCOS counts classes including background; ours is the one class "logo"


class LiteFPN(nn.Module):
    def __init__(self, fpn_channels: int = 64):
        super().__init__()
        self.body = EfficientNetLite0()
        self.fpn = FeaturePyramidNetwork(list(EfficientNetLite0.feature_channels), fpn_channels,
                                         extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels))
        self.out_channels = fpn_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self.body.features(x.contiguous(memory_format=torch.channels_last))
        return self.fpn(OrderedDict(zip(("p3", "p4", "p5"), feats)))


def freeze_early(model: FCOS, n_blocks: int = 3) -> None:
    """Freeze the stem and the first ``n_blocks`` MBConv blocks (stride ≤ 4): the costliest part of
    the backward pass on CPU, and the most generic ImageNet features."""
    body = model.backbone.body
    for m in [body._conv_stem, body._bn0, *body._blocks[:n_blocks]]:
        m.requires_grad_(False)
        m.eval()


def build_fcos(input_size: int = 384, fpn_channels: int = 64, score_thresh: float = 0.3,
               nms_thresh: float = 0.5, detections_per_img: int = 20) -> FCOS:
    sizes = ((16,), (32,), (64,), (128,), (256,))
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=((1.0,),) * len(sizes))
    return FCOS(LiteFPN(fpn_channels), num_classes=2, min_size=input_size, max_size=input_size,
                image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], anchor_generator=anchors,
                score_thresh=score_thresh, nms_thresh=nms_thresh,
                detections_per_img=detections_per_img, topk_candidates=200)


@register_model("fcos_lite0")
def _fcos_lite0(**kw) -> FCOS:
    return build_fcos(**kw)


def images_to_tensors(images: list[np.ndarray], device: str = "cpu") -> list[torch.Tensor]:
    return [torch.from_numpy(np.require(im, np.uint8, ['C', 'W'])).permute(2, 0, 1).float().div_(255).to(device)
            for im in images]


@torch.inference_mode()
def detect_images(model: FCOS, images: list[np.ndarray], score_thresh: float, device: str = "cpu",
                  batch_size: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
    """HWC uint8 RGB images → per image (boxes [K,4] x1y1x2y2 in original pixels, scores [K])."""
    out = []
    for i in range(0, len(images), batch_size):
        preds = model(images_to_tensors(images[i:i + batch_size], device))
        for p in preds:
            keep = (p["labels"] == LOGO_LABEL) & (p["scores"] >= score_thresh)
            out.append((p["boxes"][keep].cpu().numpy().astype(np.float32),
                        p["scores"][keep].cpu().numpy().astype(np.float32)))
    return out
