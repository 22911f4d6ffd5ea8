"""Embedder benchmark with its ablation, in one run: print (and optionally write) the tables.

  (a) the backbone untrained beyond its initialisation (ImageNet EfficientNet-Lite0, random head)
  (b) proxy margin loss alone          (same data, sampler and budget as (c), no text pairing)
  (c) proxy loss + text hard negatives (the shipped recipe: jobs/configs/train_embedder.yaml)

(b) and (c) are trained here with the same wall-clock budget, ``--minutes`` (resumable: an
interrupted run continues from build/ablation/<variant>/checkpoint; a finished one is reused).
The shipped artifact (recipe (c), trained by jobs/train_embedder.py with the budget of its config)
is measured on the same queries as a last row. Zero-shot test:
brands and wordmark families held out of training; gallery = one clean rendering per test class;
queries = scene crops cut by their true boxes; the same queries for every model.

    make fonts && python jobs/bench_embedder.py --write docs/bench/embedder.md
Needs the train extra: pip install -e '.[train]'.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from logoscan import config_io
from logoscan.models.artifact import default_artifact_path, load_artifact
from logoscan.models.embedder import embed_crops
from logoscan.synth.marks import demo_gallery, unseen_invented
from logoscan.train.common import emit_report
from logoscan.train.embedder import (EmbedderTrainConfig, artifact_config, build_embedder, class_sets,
                                     evaluate, train, zero_shot_report)


def train_or_reuse(cfg: EmbedderTrainConfig, cache_dir: str):
    out = Path(cfg.out)
    if (out / "config.json").is_file():
        done = json.loads((out / "config.json").read_text()).get("train_config")
        if done is not None and done == json.loads(json.dumps(asdict(cfg))):
            print(f"reusing {out} (trained with this exact config)", file=sys.stderr)
            return load_artifact(str(out)) + (True,)
    train(cfg, resume=True, cache_dir=cache_dir)
    return load_artifact(str(out)) + (False,)


def crops_per_second(model, config, device: str, batch: int = 64, n: int = 512, repeats: int = 5
                     ) -> list[float]:
    """crops/s of ``repeats`` timed passes over ``n`` crops (after a warm-up batch)."""
    size = config["input_size"]
    rng = np.random.default_rng(0)
    from PIL import Image
    crops = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]
    model.to(device)
    embed_crops(model, config, crops[:batch], batch_size=batch, device=device)  # warm-up
    rates = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        embed_crops(model, config, crops, batch_size=batch, device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        rates.append(n / (time.perf_counter() - t0))
    model.to("cpu")
    return sorted(rates)


def real_section(data_dir: str, models: dict, panels: list) -> list[str]:
    """Zero-shot on real photos: the badge crops of the held-out car makes (never trained on in any
    form) against all clean car logos, one vector per logo and with gallery-side views."""
    if not data_dir:
        return []
    if not Path(data_dir, "car-badges").is_dir():
        return ["## Real photographs", "", f"Not measured: {data_dir} holds no car-badges/ "
                "(see ../shared/data/real-photos/README.md).", ""]
    from logoscan.refviews import VIEWS, reference_views
    from logoscan.train.realcrops import HELDOUT_MAKES, clean_logo, logo_files, real_zero_shot
    files = logo_files(Path(data_dir, "car-logos-clean"))
    rows, first = [], None
    for name, (model, config) in models.items():
        size, pad = config["input_size"], config["crop_pad"]
        crops = [clean_logo(f, size, pad) for f in files]
        one = real_zero_shot(model, config, data_dir)
        views = [v for c in crops for v in reference_views(c)]
        multi = real_zero_shot(model, config, data_dir, gallery_embeddings=embed_crops(model, config, views),
                               gallery_labels=[f.stem for f in files for _ in VIEWS])
        first = first or one
        rows.append(f"| {name} | {one['recall@1']:.3f} | {one['recall@5']:.3f} | {multi['recall@1']:.3f} "
                    f"| {multi['recall@5']:.3f} | {one['genuine_median']:.3f} | {one['impostor_median']:.3f} "
                    f"| {' '.join(f'{k} {v:.2f}' for k, v in one['by_make'].items())} |")
        panels.append((f"real: {name}"[:60], one["genuine"], one["impostor"]))
    return [
        "## Real photographs: zero-shot on held-out car makes",
        "",
        f"Queries: the {first['queries']} boxed badges of {len(HELDOUT_MAKES)} car makes held out of training in every "
        f"form ({', '.join(HELDOUT_MAKES)}: not their photos, clean logos or icons), cut by their true boxes "
        f"like a detection. Gallery: all {first['gallery_logos']} clean car logos "
        f"(`car-logos-clean/`); the held-out makes' logos are gallery entries only. "
        f"Gallery views: each logo also as {', '.join(VIEWS[1:])} (`logoscan/refviews.py`), "
        "the nearest view counts. Distances: cosine, one vector per logo.",
        "",
        "| model | recall@1 | recall@5 | recall@1, gallery views | recall@5, gallery views | genuine median "
        "| nearest impostor median | recall@1 by make |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "## Synthetic zero-shot",
        "",
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="jobs/configs/train_embedder.yaml", help="the recipe of (c)")
    ap.add_argument("--set", action="append", default=[], help="override a key of (b) and (c), e.g. max_minutes=2")
    ap.add_argument("--minutes", type=float, default=15.0, help="training budget of (b) and (c) each")
    ap.add_argument("--shipped", default=default_artifact_path("embedder"),
                    help="the artifact to measure beside the ablation ('' to skip)")
    ap.add_argument("--out", default="build/ablation")
    ap.add_argument("--queries", type=int, default=3, help="scene crops per test class")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", default="", help="also write the report (markdown) here, and the PNG beside it")
    ap.add_argument("--no-ablation", action="store_true",
                    help="skip (a)-(c): measure only the shipped artifact and --artifact ones")
    ap.add_argument("--artifact", action="append", default=[], metavar="NAME=PATH",
                    help="another embedder artifact to measure beside the shipped one (repeatable)")
    ap.add_argument("--real", default="../shared/data/real-photos",
                    help="real photos (car-badges/, car-logos-clean/): the real zero-shot table ('' to skip)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    base = replace(config_io.load(EmbedderTrainConfig, a.config, a.set), max_minutes=a.minutes)
    cfg_c = replace(base, out=f"{a.out}/c-proxy-text-hn")
    cfg_b = replace(base, out=f"{a.out}/b-proxy", hard_share=0.0, hard_weight=0.0,
                    version=base.version + "-ablation-proxy-only")
    cache = f"{a.out}/views"

    t0 = time.time()
    reused = []
    models = {}
    if not a.no_ablation:
        torch.manual_seed(base.seed)
        model_a = build_embedder(replace(base, init_from="")).eval()
        init = ("ImageNet backbone" if base.imagenet_init and base.backbone == "efficientnet_lite0"
                else "weights file" if base.backbone_weights else "random backbone")
        models[f"(a) init only ({init}, random head)"] = (model_a, artifact_config(base))
        for name, cfg in (("(b) proxy loss alone", cfg_b), ("(c) proxy + text hard negatives", cfg_c)):
            model, config, was_reused = train_or_reuse(cfg, cache)
            models[name] = (model, config)
            reused.append(was_reused)
    train_s = time.time() - t0
    for spec in a.artifact:
        name, _, path = spec.partition("=")
        if not path or not Path(path, "config.json").is_file():
            ap.error(f"--artifact {spec!r}: give NAME=PATH of an embedder artifact folder")
        models[name] = load_artifact(path)
    if a.shipped:
        shipped_model, shipped_cfg = load_artifact(a.shipped)
        tc = shipped_cfg.get("train_config", {})
        models[f"shipped: {shipped_cfg.get('version', '?')} ({tc.get('max_minutes', '?')} min, "
               f"{'recipe (c)' if tc.get('hard_weight') else 'proxy loss alone'})"] = (shipped_model, shipped_cfg)

    _, held = class_sets(base)
    inv = unseen_invented(base.seed, 200)
    demo = [m for *_, m in demo_gallery()]
    rows, panels = [], []
    for name, (model, config) in models.items():
        rep = zero_shot_report(model, config, held, base.seed + 1001, a.queries, base.crop_pad, base.text_min_sim)
        ui = evaluate(model, config, inv, base.seed + 1004, a.queries, base.crop_pad)
        dg = evaluate(model, config, demo, base.seed + 1002, 10, base.crop_pad)
        rows.append((name, rep, ui, dg, config))
        panels.append((name[:60], rep["genuine"], rep["impostor"]))

    art = a.shipped or (a.artifact[-1].partition("=")[2] if a.artifact else cfg_c.out)
    c_model, c_config = load_artifact(art)
    cpu = crops_per_second(c_model, c_config, "cpu")
    gpu = ""
    if torch.cuda.is_available():
        g = crops_per_second(c_model, c_config, "cuda")
        gpu = f"{torch.cuda.get_device_name(0)}: {np.median(g):.0f} crops/s (median of {len(g)})"
    size_mb = Path(art, "model.safetensors").stat().st_size / 1e6
    thr = c_config.get("default_threshold")

    r0 = rows[0][1]
    f = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        "# Embedder benchmark" + ("" if a.no_ablation else " and ablation"),
        "",
        f"Command: `python jobs/bench_embedder.py --config {a.config} --minutes {a.minutes:g}"
        + "".join(f" --set {s}" for s in a.set) + f" --queries {a.queries}"
        + (" --no-ablation" if a.no_ablation else "") + "".join(f" --artifact {s}" for s in a.artifact)
        + (f" --shipped {a.shipped or repr('')}" if a.shipped != default_artifact_path("embedder") else "") + "`",
        *([] if a.no_ablation else [
        f"(b) and (c): same data, sampler and budget ({base.max_minutes:g} min wall clock each on "
        f"{a.threads} CPU threads, batch {base.batch_size}, "
        f"{'one view per class' if base.m_per_class == 1 else f'{base.m_per_class} views per class'} "
        f"(hard-negative classes ride along in (c)); "
        + ("both reused from an earlier run of this command (same configs)." if all(reused)
           else f"trained and evaluated in {train_s / 60:.0f} min here.")]),
        "",
        *real_section(a.real, models, panels),
        f"Zero-shot test classes: {r0['all']['classes']} (brands and text-similar wordmark families held out "
        f"of training: {r0['by_kind']['brand']['classes']} brands, {r0['by_kind']['wordmark family']['classes']} "
        f"family wordmarks); gallery = one clean rendering each; {a.queries} scene-crop queries per class "
        f"({r0['all']['queries']} queries, the same for every model). Text-similar subset: the "
        f"{r0['text_similar']['classes']} test classes whose name is ≥ {base.text_min_sim} similar to another "
        "test class's name (normalised edit / Jaro-Winkler similarity).",
        "",
        "| model | recall@1 | recall@5 | text-similar recall@1 | text-similar recall@5 | brands recall@1 "
        "| families recall@1 | unseen emblems recall@1 | demo marks recall@1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rep, ui, dg, _ in rows:
        lines.append(
            f"| {name} | {f(rep['all']['recall@1'])} | {f(rep['all']['recall@5'])} "
            f"| {f(rep['text_similar']['recall@1'])} | {f(rep['text_similar']['recall@5'])} "
            f"| {f(rep['by_kind']['brand']['recall@1'])} | {f(rep['by_kind']['wordmark family']['recall@1'])} "
            f"| {f(ui['recall@1'])} | {f(dg['recall@1'])} |")
    lines += [
        "",
        "Median cosine distance of a query to its own class (genuine) and to the nearest other class (impostor):",
        "",
        "| model | genuine median | impostor median | queries whose own class is nearer than every impostor |",
        "|---|---|---|---|",
        *[f"| {name} | {np.median(rep['genuine']):.3f} | {np.median(rep['impostor']):.3f} "
          f"| {float(np.mean(rep['genuine'] < rep['impostor'])):.3f} |" for name, rep, *_ in rows],
        "",
        f"Histograms: `{Path(a.write or 'embedder.md').stem}_distances.png` beside this file.",
        "",
        f"Artifact measured below: `{'logoscan/weights/embedder' if art == default_artifact_path('embedder') else art}` "
        f"({c_config.get('version', '?')}): `model.safetensors` {size_mb:.1f} MB; default threshold {thr}.",
        "",
        "| throughput (model only, crops already cut to the input size) | crops/s |",
        "|---|---|",
        f"| CPU, {a.threads} threads ({platform.machine()}), batch 64, {c_config['input_size']} px "
        f"| {np.median(cpu):.0f} (median of {len(cpu)} passes of 512 crops; range {cpu[0]:.0f}–{cpu[-1]:.0f}) |",
        f"| GPU | {gpu or 'not measured: no GPU on the machine that ran this'} |",
        "",
    ]
    emit_report("\n".join(lines), a.write)
    if a.write:
        from logoscan.plots import histograms
        histograms(Path(a.write).with_name(Path(a.write).stem + "_distances.png"), [(*p, thr) for p in panels],
                   "cosine distance of each query to its own class (blue) and to the nearest other class "
                   "(red); green: the shipped default threshold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
