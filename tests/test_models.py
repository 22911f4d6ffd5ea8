"""Embedder backbones: torchvision ones, a user's weights from a path, clear errors."""
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from logoscan.models.embedder import LogoEmbedder, load_backbone_weights


def test_torchvision_backbone_with_weights_from_a_file(tmp_path):
    ref = torchvision.models.resnet18()
    path = tmp_path / "r18.safetensors"
    save_file(ref.state_dict(), str(path))
    m = LogoEmbedder("torchvision:resnet18", 32)
    loaded, expected = load_backbone_weights(m.backbone, str(path))
    assert loaded == expected
    assert torch.equal(m.backbone.net.conv1.weight, ref.conv1.weight)
    e = m.eval()(torch.rand(2, 3, 64, 64))
    assert e.shape == (2, 32) and torch.allclose(e.norm(dim=1), torch.ones(2))
    # a DataParallel-style checkpoint (.pth, "module." prefix, wrapped in state_dict) loads too
    pth = tmp_path / "r18.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}, pth)
    assert load_backbone_weights(LogoEmbedder("torchvision:resnet18").backbone, str(pth))[0] == expected


def test_wrong_weights_and_unknown_backbones_fail_clearly(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"x.weight": torch.zeros(3)}, str(path))
    with pytest.raises(ValueError, match="no tensor matches"):
        load_backbone_weights(LogoEmbedder("torchvision:resnet18").backbone, str(path))
    with pytest.raises(ValueError, match="unknown backbone"):
        LogoEmbedder("vgg99")


def test_detector_boxes_come_back_in_original_pixels():
    """The detector resizes to its input size internally; boxes must map back to the image."""
    import random

    import numpy as np
    from torchvision.ops import box_iou

    from logoscan.models.artifact import default_artifact_path, load_artifact
    from logoscan.models.detector import detect_images
    from logoscan.synth.marks import demo_gallery
    from logoscan.synth.scenes import make_scene

    model, cfg = load_artifact(default_artifact_path("detector"))
    marks = [m for *_, m in demo_gallery()]
    rng = random.Random(7)
    for size in ((1400, 1000), (300, 420)):
        im, planted = make_scene(rng, rng.sample(marks, 2), size=size,
                                 logo_px=(min(size) // 6, min(size) // 3), max_rot=0, n_clutter=0)
        (boxes, scores), = detect_images(model, [np.asarray(im)], cfg["score_thresh"])
        truth = torch.tensor([p.box for p in planted])
        iou = box_iou(torch.from_numpy(boxes), truth)
        assert len(boxes) and (iou.max(0).values >= 0.5).all(), (size, boxes, truth)
