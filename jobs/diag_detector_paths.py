"""One-off diagnostic (not a benchmark table): the detector's CPU paths on the same images.

    python jobs/diag_detector_paths.py [--images 64] [--profile]

Makes (or reuses) 800x800 catalog JPEGs like jobs/bench_throughput.py's under --workdir and
prints milliseconds per image, best of 3, batches of 4, for: the model as saved (FCOS's own
transform); the inference load (BatchNorm folded, resized before normalising) in fp32 and in
bf16; bf16 with the FCOS head kept in fp32; and `torch.compile` of the backbone in bf16 and fp32,
with the time of each first (compiling) call. ``--profile`` adds torch.profiler's top operators
for the inference load in fp32 and bf16. docs/scaling.md quotes its output.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "jobs"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default="build/diag-detector")
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    import torch

    from bench_throughput import make_catalog
    from logoscan.images import decode
    from logoscan.models import default_artifact_path, load_artifact
    from logoscan.models.detector import detect_images
    torch.set_num_threads(a.threads)
    work = Path(a.workdir)
    rows = make_catalog(work, a.images) if not (work / "catalog").is_dir() else None
    uris = [r["image_uri"] for r in rows] if rows else sorted(str(p) for p in (work / "catalog").glob("*.jpg"))
    images = [decode(Path(u).read_bytes(), 50_000_000) for u in uris[:a.images]]
    saved, cfg = load_artifact(default_artifact_path("detector"))
    fast, _ = load_artifact(default_artifact_path("detector"), inference=True)
    thr = cfg["score_thresh"]

    def timed(name, model, precision):
        t = time.perf_counter()
        detect_images(model, images[:4], thr, batch_size=4, precision=precision)
        first = time.perf_counter() - t
        best = min(_run(model, precision) for _ in range(3))
        print(f"{name:45s} {1000 * best / len(images):6.1f} ms/image  (first call {first:.1f} s)", flush=True)

    def _run(model, precision):
        t = time.perf_counter()
        detect_images(model, images, thr, batch_size=4, precision=precision)
        return time.perf_counter() - t

    print(f"{len(images)} images, {a.threads} threads, batches of 4")
    timed("as saved, fp32", saved, "fp32")
    timed("inference load, fp32", fast, "fp32")
    timed("inference load, bf16", fast, "bf16")
    head = fast.head.forward

    def fp32_head(x):
        with torch.autocast("cpu", enabled=False):
            return head([f.float() for f in x])
    fast.head.forward = fp32_head
    timed("inference load, bf16, FCOS head in fp32", fast, "bf16")
    fast.head.forward = head
    if a.profile:
        from torch.profiler import ProfilerActivity, profile
        for precision in ("fp32", "bf16"):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                detect_images(fast, images[:16], thr, batch_size=4, precision=precision)
            print(f"profile, inference load, {precision}:")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))
    fast.backbone = torch.compile(fast.backbone, dynamic=False)
    timed("inference load, compiled backbone, bf16", fast, "bf16")
    timed("inference load, compiled backbone, fp32", fast, "fp32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
