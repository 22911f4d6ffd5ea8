"""One-off diagnostic (not a benchmark table): does anything on the query or gallery side, without
training, bring a real badge closer to its clean logo? The real zero-shot protocol of
jobs/bench_embedder.py (the badges of the 6 held-out makes against all 378 clean car logos,
`logoscan.train.realcrops.real_zero_shot`), with the crops changed before they are embedded:

- grey, equalised or auto-contrasted on both sides (the source photos were contrast-equalised);
- the gallery blurred down to a badge's size (median ~26 px) and back up;
- the clean logo's parts as extra gallery vectors (the emblem without the wordmark under it:
  inks separated by an empty band of rows or columns; the nearest vector counts);
- ``--by-size``: only the shipped embedder's numbers per badge size on its photo (the box's longer
  side), with how often a badge's nearest badge of another photo is of its own make; no variants;
- ``--exemplars 1,3,5``: only the shipped embedder, with K real badge crops per make (from K
  random photos, 5 draws) stored beside the clean logos as more vectors of that logo, for the
  held-out makes alone and for every make with photos; queries from photos within 2 of an
  exemplar photo's number are left out (the source's augmented copies sit next to each other);
- the ImageNet EfficientNet-Lite0 (``--variants lite0,lite1,lite2``: and -Lite1, -Lite2) features
  without the trained head (train extra); ``--imagenet-only`` prints only those rows.

    python jobs/diag_real_queries.py [--embedder logoscan/weights/embedder]

docs/bench/embedder_real.md quotes what it printed.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bands(ink, axis: int, min_gap: int) -> list[tuple[int, int]]:
    """Runs of ink along ``axis`` (0: rows, 1: columns) separated by ≥ ``min_gap`` empty lines."""
    import numpy as np
    idx = np.flatnonzero(ink.any(axis=1 - axis))
    if not len(idx):
        return []
    out, start, prev = [], idx[0], idx[0]
    for i in idx[1:]:
        if i - prev > min_gap:
            out.append((start, prev + 1))
            start = i
        prev = i
    return out + [(start, prev + 1)]


def logo_parts(path, size: int, pad: float, min_share: float = 0.08):
    """The parts of a clean logo (PNG with alpha) cut apart by empty bands, each as a gallery crop."""
    import numpy as np
    from PIL import Image

    from logoscan.images import decode
    from logoscan.models.embedder import square_crop
    im = Image.fromarray(decode(Path(path).read_bytes(), 50_000_000))
    ink = np.asarray(Image.open(path).convert("RGBA").getchannel("A")) > 32
    h, w = ink.shape
    out = []
    for axis in (0, 1):
        runs = bands(ink, axis, max(2, int(0.03 * (h, w)[axis])))
        for s, e in runs if len(runs) > 1 else []:
            sub = ink[s:e] if axis == 0 else ink[:, s:e]
            ys, xs = np.nonzero(sub)
            box = ((xs.min(), s + ys.min(), xs.max() + 1, s + ys.max() + 1) if axis == 0 else
                   (s + xs.min(), ys.min(), s + xs.max() + 1, ys.max() + 1))
            if (box[2] - box[0]) * (box[3] - box[1]) < min_share * h * w:
                continue
            piece = im.crop(tuple(int(v) for v in box))
            out.append(square_crop(piece, (0, 0, piece.width, piece.height), pad, size))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embedder", default=str(ROOT / "logoscan/weights/embedder"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/real-photos"))
    ap.add_argument("--imagenet-only", action="store_true", help="only the rows of plain ImageNet features")
    ap.add_argument("--variants", default="lite0", help="EfficientNet-Lite variants for the ImageNet rows, "
                                                         "e.g. lite0,lite1,lite2")
    ap.add_argument("--by-size", action="store_true", help="only the shipped embedder, per badge size on the photo")
    ap.add_argument("--exemplars", default="", help="e.g. 1,3,5: real badge crops per make stored beside the clean logos")
    a = ap.parse_args()

    import torch
    import torch.nn.functional as F
    from PIL import Image, ImageOps

    from logoscan.models.artifact import load_artifact
    from logoscan.models.embedder import embed_crops
    from logoscan.train.realcrops import HELDOUT_MAKES, clean_logo, heldout_queries, logo_files, retrieval_report
    torch.set_num_threads(2)
    data = Path(a.data)
    model, cfg = load_artifact(a.embedder)
    size, pad = cfg["input_size"], cfg["crop_pad"]
    crops, logos = heldout_queries(str(data), tuple(HELDOUT_MAKES), size, pad)
    files = logo_files(data / "car-logos-clean")
    names = [f.stem for f in files]
    gallery = [clean_logo(f, size, pad) for f in files]
    print(f"{len(crops)} badge crops of {', '.join(HELDOUT_MAKES)}; {len(files)} clean logos; {a.embedder}\n")
    if a.by_size:
        return by_size_rows(model, cfg, data, crops, logos, gallery, names, size, pad)
    if a.exemplars:
        return exemplar_rows(model, cfg, data, files, names, [int(k) for k in a.exemplars.split(",")])
    print("| variant | gallery vectors | recall@1 | recall@5 | genuine median | nearest impostor median |")
    print("|---|---|---|---|---|---|")

    def row(name, q, g, labels):
        r = retrieval_report(q, list(logos), g, labels, names)
        print(f"| {name} | {len(g)} | {r['recall@1']:.3f} | {r['recall@5']:.3f} | {r['genuine_median']:.3f} | "
              f"{r['impostor_median']:.3f} |", flush=True)

    def run(name, qf=lambda x: x, gf=lambda x: x, m=model, c=cfg, q_crops=crops, g_crops=gallery):
        row(name, embed_crops(m, c, [qf(x) for x in q_crops]), embed_crops(m, c, [gf(x) for x in g_crops]), names)

    def grey(im):
        return ImageOps.grayscale(im).convert("RGB")

    def blur_to(s):
        return lambda im: im.resize((s, s), Image.BILINEAR).resize((size, size), Image.BILINEAR)

    t = time.time()
    if not a.imagenet_only:
        shipped_rows(run, row, grey, blur_to, model, cfg, crops, files, names, size, pad)
    try:
        from logoscan.models.backbone import EfficientNetLite, load_imagenet_weights
        nets = {}
        for v in a.variants.split(","):
            nets[v] = EfficientNetLite(v)
            load_imagenet_weights(nets[v])
    except RuntimeError as e:
        print(f"\n(ImageNet rows skipped: {e})")
        return 0

    class Pooled(torch.nn.Module):
        def __init__(self, b):
            super().__init__()
            self.b = b

        def forward(self, x):
            return F.normalize(self.b(x).mean((2, 3)), dim=1)

    imagenet = dict(cfg, preprocess={"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
                    arch_args={"embed_dim": 1280})
    for s in (96, 160):
        q = [x.resize((s, s), Image.BILINEAR) for x in heldout_queries(str(data), tuple(HELDOUT_MAKES), s, pad)[0]]
        for v, net in nets.items():
            run(f"ImageNet {v.capitalize()} features, no trained head, {s} px", m=Pooled(net).eval(), c=imagenet,
                q_crops=q, g_crops=[clean_logo(f, s, pad) for f in files])
    print(f"\n{time.time() - t:.0f} s")
    return 0


def by_size_rows(model, cfg, data, crops, logos, gallery, names, size, pad) -> int:
    """The shipped embedder per badge size on the photo; and per size, how often a badge's nearest
    badge of another photo (photos numbered within 2 left out: the source's augmented copies) is of
    its own make, i.e. whether small badges carry their make at all."""
    import numpy as np

    from logoscan.models.embedder import embed_crops
    from logoscan.train.realcrops import HELDOUT_MAKES, heldout_badges, report_by_size, retrieval_report
    q = embed_crops(model, cfg, list(crops))
    rep = retrieval_report(q, list(logos), embed_crops(model, cfg, gallery), names, names)
    badges = heldout_badges(str(data), tuple(HELDOUT_MAKES), size, pad)
    sides, photo = np.array(badges.sides), np.array([int(g) for g in badges.groups])
    sim = np.where(np.abs(photo[:, None] - photo[None, :]) <= 2, -np.inf, q @ q.T)
    own = np.array(logos)
    same = np.where(own[sim.argmax(1)] == own, 0, 1)     # as a rank: 0 = the nearest badge is its make
    near = {r["side_px"]: r["recall@1"] for r in report_by_size({**rep, "rank": same}, sides)}
    shares = np.unique(own, return_counts=True)[1] / len(own)
    print("| badge side on the photo (px) | queries | recall@1 | recall@5 | genuine median | nearest impostor median "
          "| nearest badge of another photo is its make |")
    print("|---|---|---|---|---|---|---|")
    for r in report_by_size(rep, sides):
        print(f"| {r['side_px']} | {r['queries']} | {r['recall@1']:.3f} | {r['recall@5']:.3f} | "
              f"{r['genuine_median']:.3f} | {r['impostor_median']:.3f} | {near[r['side_px']]:.3f} |")
    print(f"\n(a badge's nearest badge is of its make by chance: {float((shares ** 2).sum()):.3f})")
    print("queries under 32 px by make: " + ", ".join(
        f"{m} {int(((own == m) & (sides < 32)).sum())}" for m in sorted(set(logos))))
    return 0


def exemplar_rows(model, cfg, data, files, names, ks, draws: int = 5) -> int:
    """Recall@1/@5 of the held-out badges when K real badge crops per make (K photos drawn at
    random) are stored as extra vectors of that make's logo; the nearest vector of a logo counts."""
    import numpy as np

    from logoscan.models.embedder import embed_crops
    from logoscan.train.realcrops import (HELDOUT_MAKES, MAKE_LOGO, badge_crops, clean_logo, heldout_badges,
                                         retrieval_report, split_badges)
    size, pad = cfg["input_size"], cfg["crop_pad"]
    q = heldout_badges(str(data), tuple(HELDOUT_MAKES), size, pad)
    e, makes, photo = embed_crops(model, cfg, list(q.crops)), np.array(q.makes), np.array([int(g) for g in q.groups])
    trained, _ = split_badges(data / "car-badges")
    t = badge_crops(data / "car-badges", trained, size, pad)
    tk = [i for i, m in enumerate(t.makes) if MAKE_LOGO.get(m) and m not in HELDOUT_MAKES]
    te, tmakes = embed_crops(model, cfg, [t.crops[i] for i in tk]), np.array([t.makes[i] for i in tk])
    tphoto = np.array([int(t.groups[i]) for i in tk])
    gal = embed_crops(model, cfg, [clean_logo(f, size, pad) for f in files])
    logos = np.array([MAKE_LOGO[m] for m in makes])

    def pick(rng, mk, ph, k):
        out = []
        for m in sorted(set(mk)):
            for p in rng.choice(sorted(set(ph[mk == m])), min(k, len(set(ph[mk == m]))), replace=False):
                out.append(int(np.flatnonzero((ph == p) & (mk == m))[0]))
        return out

    print(f"{len(set(tmakes))} trained makes with photos and a clean logo; {draws} draws each\n")
    print("| real exemplars per make | for which makes | gallery vectors | queries | recall@1 (range over draws) | "
          "recall@5 | recall@1, same queries, clean logos only |")
    print("|---|---|---|---|---|---|---|")
    for k in ks:
        for every in (False, True):
            r1, r5, base, nq, nv = [], [], [], [], 0
            for seed in range(draws):
                rng = np.random.default_rng(seed)
                ex = pick(rng, makes, photo, k)
                keep = np.array([np.abs(photo[ex] - p).min() > 2 for p in photo])
                vecs, labels = [gal, e[ex]], names + list(logos[ex])
                if every:
                    tex = pick(rng, tmakes, tphoto, k)
                    vecs.append(te[tex])
                    labels += [MAKE_LOGO[m] for m in tmakes[tex]]
                v = np.concatenate(vecs)
                rep = retrieval_report(e[keep], list(logos[keep]), v, labels, names)
                r1.append(rep["recall@1"])
                r5.append(rep["recall@5"])
                base.append(retrieval_report(e[keep], list(logos[keep]), gal, names, names)["recall@1"])
                nq.append(int(keep.sum()))
                nv = len(v)
            who = "every make with photos" if every else "the held-out makes"
            print(f"| {k} | {who} | {nv} | {np.mean(nq):.0f} | {np.mean(r1):.3f} ({min(r1):.3f}-{max(r1):.3f}) | "
                  f"{np.mean(r5):.3f} | {np.mean(base):.3f} |", flush=True)
    return 0


def shipped_rows(run, row, grey, blur_to, model, cfg, crops, files, names, size, pad):
    """The shipped embedder with the queries or the gallery changed."""
    from logoscan.models.embedder import embed_crops
    from logoscan.train.realcrops import clean_logo
    from PIL import ImageOps
    run("as shipped")
    run("grey, both sides", grey, grey)
    run("equalised grey, both sides", lambda im: ImageOps.equalize(grey(im)).convert("RGB"),
        lambda im: ImageOps.equalize(grey(im)).convert("RGB"))
    run("auto-contrast grey, both sides", lambda im: ImageOps.autocontrast(grey(im), cutoff=2).convert("RGB"),
        lambda im: ImageOps.autocontrast(grey(im), cutoff=2).convert("RGB"))
    for s in (16, 24, 32):
        run(f"gallery blurred to {s} px and back", gf=blur_to(s))
    parts, labels = [], []
    for f, n in zip(files, names):
        for p in [clean_logo(f, size, pad)] + logo_parts(f, size, pad):
            parts.append(p)
            labels.append(n)
    row("gallery + the logo's parts (emblem, wordmark)", embed_crops(model, cfg, list(crops)),
        embed_crops(model, cfg, parts), labels)


if __name__ == "__main__":
    sys.exit(main())
