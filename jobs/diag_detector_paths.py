"""One-off diagnostic (not a benchmark table): the detector's CPU paths on the same images.

    python jobs/diag_detector_paths.py [--images 64] [--profile] [--int8]

Makes (or reuses) 800x800 catalog JPEGs like jobs/bench_throughput.py's under --workdir and
prints milliseconds per image, best of 3, batches of 4, for: the model as saved (FCOS's own
transform); the inference load (BatchNorm folded, resized before normalising) in fp32 and in
bf16; the weights cast to bf16 once (no autocast, so no per-call weight casts); bf16 with the FCOS
head kept in fp32; and `torch.compile` of the backbone in bf16 and fp32, with the time of each
first (compiling) call. ``--profile`` adds torch.profiler's top operators for the inference load
in fp32 and bf16. ``--int8`` adds post-training static int8 quantization of the EfficientNet body
(FX graph mode, x86 engine, calibrated on the images): its time against the same body in fp32
and bf16, and how far its feature maps are from fp32's. docs/scaling.md quotes its output.
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
    ap.add_argument("--int8", action="store_true")
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
    timed("inference load, bf16 weights, no autocast", _bf16_weights(fast), "fp32")
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
    if a.int8:
        int8_body(fast, images)
    fast.backbone = torch.compile(fast.backbone, dynamic=False)
    timed("inference load, compiled backbone, bf16", fast, "bf16")
    timed("inference load, compiled backbone, fp32", fast, "fp32")
    return 0


def _bf16_weights(model):
    """A copy of the inference model with its weights in bf16, run without autocast: bf16 in, the
    head's outputs back to fp32 for FCOS's box decoding."""
    import copy

    import torch
    m = copy.deepcopy(model)
    m.backbone.to(torch.bfloat16)
    m.head.to(torch.bfloat16)
    backbone, head = m.backbone.forward, m.head.forward
    m.backbone.forward = lambda x: backbone(x.to(torch.bfloat16))
    m.head.forward = lambda f: {k: v.float() for k, v in head(f).items()}
    return m


def int8_body(model, images) -> None:
    """Post-training static int8 of the EfficientNet body (FX graph mode, x86 engine). FX cannot
    trace SameConv2d's shape-dependent padding, so the body is first rewritten with static
    padding, which is exact for inputs divisible by 32 (FCOS's transform pads batches to that)."""
    import copy
    import time
    import warnings

    import torch
    from torch import nn
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from logoscan.models.backbone import SameConv2d
    from logoscan.models.detector import resized_tensors

    def static(m):
        for name, c in list(m.named_children()):
            if isinstance(c, SameConv2d):
                k, s = c.kernel_size[0], c.stride[0]
                conv = nn.Conv2d(c.in_channels, c.out_channels, k, s, 0 if s == 2 else k // 2,
                                 groups=c.groups, bias=c.bias is not None)
                conv.weight, conv.bias = c.weight, c.bias
                p = k - s  # SAME on an even input, stride 2: k - 2, split low/high
                setattr(m, name, nn.Sequential(nn.ZeroPad2d((p // 2, p - p // 2, p // 2, p - p // 2)), conv)
                        if s == 2 else conv)
            else:
                static(c)

    class Features(nn.Module):
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, x):
            return self.body.features(x)

    body = Features(model.backbone.body).eval()
    sbody = Features(copy.deepcopy(model.backbone.body)).eval()
    static(sbody)
    t, _ = resized_tensors(model, images)
    x = torch.stack([(i - 0.5) / 0.5 for i in t]).contiguous(memory_format=torch.channels_last)
    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(sbody, get_default_qconfig_mapping("x86"), example_inputs=(x[:4],))
        with torch.no_grad():
            for i in range(0, len(x), 4):
                prepared(x[i:i + 4])
        q = convert_fx(prepared)

    def ms(f, bf16=False):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            f(x[:4])
            best = 1e9
            for _ in range(3):
                t0 = time.perf_counter()
                for i in range(0, len(x), 4):
                    f(x[i:i + 4])
                best = min(best, time.perf_counter() - t0)
        return 1000 * best / len(x)

    with torch.inference_mode():
        ref, st, got = body(x[:8]), sbody(x[:8]), q(x[:8])
    err = [float((g.float() - r).norm() / r.norm()) for g, r in zip(got, ref)]
    print(f"EfficientNet body only: fp32 {ms(body):.1f}, bf16 {ms(body, True):.1f}, int8 {ms(q):.1f} ms/image; "
          f"static padding differs from SAME by {max(float((a - b).abs().max()) for a, b in zip(st, ref)):.1e}; "
          f"int8 feature maps' relative error (stride 8/16/32): {', '.join(f'{e:.3f}' for e in err)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
