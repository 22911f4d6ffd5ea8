"""The `logoscan` command."""
from __future__ import annotations

import argparse
import json
import os
import sys

from logoscan import config_io
from logoscan.config_io import ConfigError
from logoscan.feedback import FeedbackError
from logoscan.gallery import GalleryError
from logoscan.ocr import OcrUnavailable
from logoscan.sweep import ScanError
from logoscan.refviews import DEFAULT_VIEWS, VIEWS
from logoscan.review_app import ReviewError
from logoscan.schema import SchemaError
from logoscan.store import StoreError
from logoscan.synth.marks import RendererMissing


def _scan_config(a):
    from logoscan.config import ScanConfig
    data = config_io.read_mapping(a.config)
    for key, val in (("manifest", a.manifest), ("milvus_uri", a.milvus_uri), ("collection", a.collection),
                     ("out", a.out), ("run_id", a.run_id), ("engine", a.engine)):
        if val is not None:
            data[key] = val
    if a.ray_address:
        config_io.set_dotted(data, "ray.address", a.ray_address)
    if a.incremental:
        config_io.set_dotted(data, "store.incremental", True)
    if a.store:
        config_io.set_dotted(data, "store.uri", a.store)
    if a.max_error_rate is not None:
        data["max_error_rate"] = a.max_error_rate
    return config_io.build(ScanConfig, config_io.apply(data, a.set))


def cmd_scan(a) -> int:
    from logoscan.sweep import run_scan, too_many_errors
    cfg = _scan_config(a)
    s = run_scan(cfg)
    print(json.dumps({k: s[k] for k in ("run_id", "rows_in", "rows_scanned", "rows_reused", "rows_errored",
                                        "flagged", "flagged_by_queue", "outputs")}, indent=2))
    why = too_many_errors(s, cfg.max_error_rate)
    if why:  # published (the errors are there to read), but a nightly job must see it failed
        print(f"logoscan: error: {why}", file=sys.stderr)
        return 3
    return 0


def cmd_rematch(a) -> int:
    from logoscan.config import RematchConfig
    from logoscan.sweep import run_rematch
    data = config_io.read_mapping(a.config)
    for key, val in (("store", a.store), ("milvus_uri", a.milvus_uri), ("collection", a.collection),
                     ("out", a.out), ("manifest", a.manifest), ("run_id", a.run_id), ("previous", a.previous)):
        if val is not None:
            data[key] = val
    if a.all_flags:
        data["all_flags"] = True
    s = run_rematch(config_io.build(RematchConfig, config_io.apply(data, a.set)))
    print(json.dumps({k: s[k] for k in ("run_id", "rows_in", "regions", "regions_per_s", "flagged", "flagged_all",
                                        "flagged_by_queue", "store", "outputs")}, indent=2))
    return 0


def cmd_store_compact(a) -> int:
    from logoscan import storage
    from logoscan.log import configure
    from logoscan.sweep import read_manifest
    from logoscan.store import plan_compaction
    configure()
    keep = None
    if a.manifest:
        m = read_manifest(a.manifest)
        keep = set(zip(m.column("item_id").to_pylist(), m.column("image_id").to_pylist()))
    plan = plan_compaction(a.store, a.keep_only, keep)
    report = {}
    for st, action in plan:
        if action == "delete":
            report[st.key] = {"action": "delete", "folder": st.dir, "parts": len(st.region_files())}
            if a.yes:
                storage.delete_dir(st.dir)
        else:
            report[st.key] = {"action": "compact", **st.compact(keep, dry_run=not a.yes)}
    print(json.dumps({"dry_run": not a.yes, "keys": report}, indent=2))
    if not a.yes:
        print("logoscan: dry run, nothing was changed: add --yes to do the above", file=sys.stderr)
    return 0


def _build(a) -> dict:
    from logoscan.gallery import build
    from logoscan.models import default_artifact_path, load_artifact
    model, cfg = load_artifact(a.embedder or default_artifact_path("embedder"))
    meta = build(a.refs, a.milvus_uri, a.collection, model, cfg, index_type=a.index_type,
                 keep_versions=a.keep_versions, views=tuple(v.strip() for v in a.views.split(",") if v.strip()))
    return {k: v for k, v in meta.items() if k != "threshold_calibration"}


def cmd_gallery_build(a) -> int:
    from logoscan.log import configure
    configure()
    print(json.dumps(_build(a), indent=2))
    return 0


def cmd_gallery_add(a) -> int:
    from logoscan.feedback import add_logo
    from logoscan.log import configure
    configure()
    row = add_logo(a.refs, a.image, a.label, a.category, a.text, a.logo_id, a.box)
    print(json.dumps({"added": row, "gallery": _build(a) if not a.no_build else None}, indent=2))
    return 0


def cmd_gallery_ingest(a) -> int:
    from logoscan.feedback import ingest
    from logoscan.log import configure
    configure()
    r = ingest(a.decisions, a.run, a.refs, a.crops, a.run_id)
    r["gallery"] = _build(a) if r["confirmed_exemplars"] and not a.no_build else None
    print(json.dumps(r, indent=2))
    return 0


def cmd_gallery_versions(a) -> int:
    from logoscan.gallery import connect, versions
    client = connect(a.milvus_uri)
    try:
        print(json.dumps(versions(client, a.collection), indent=2))
    finally:
        client.close()
    return 0


def cmd_gallery_switch(a) -> int:
    from logoscan.gallery import switch
    from logoscan.log import configure
    configure()
    print(json.dumps(switch(a.milvus_uri, a.collection, a.to), indent=2))
    return 0


def cmd_report(a) -> int:
    from logoscan.log import configure
    from logoscan.report import write_report
    configure()
    r = write_report(a.run_output, a.out, run_id=a.run_id, milvus_uri=a.milvus_uri, collection=a.collection,
                     product_px=a.product_px)
    print(json.dumps(r, indent=2))
    return 0


def cmd_review(a) -> int:
    from logoscan.log import configure
    from logoscan.review_app import serve
    configure()
    serve(a.run_output, a.run_id, a.host, a.port, a.tokens_file, a.milvus_uri, a.collection, a.queue)
    return 0


def cmd_calibrate(a) -> int:
    from logoscan.calibration import calibrate
    from logoscan.config import CalibrateConfig
    from logoscan.log import configure
    configure()
    data = config_io.read_mapping(a.config)
    for key, val in (("crops", a.crops), ("milvus_uri", a.milvus_uri), ("collection", a.collection),
                     ("out", a.out), ("target_far", a.target_far), ("mode", a.mode)):
        if val is not None:
            data[key] = val
    if a.ocr:
        config_io.set_dotted(data, "ocr.enabled", True)
    if a.detect:
        data["detect"] = True
    if a.embedder:
        config_io.set_dotted(data, "embedder.artifact", a.embedder)
    r = calibrate(config_io.build(CalibrateConfig, config_io.apply(data, a.set)))
    print(json.dumps({"gallery_version": r["gallery_version"], "crops": r["crops"],
                      "thresholds": {m: {c: v["threshold"] for c, v in x["categories"].items()}
                                     for m, x in r["modes"].items()},
                      "class_thresholds": {m: len(x["classes"]) for m, x in r["modes"].items()},
                      "detected": r["detected"],
                      "outcome": {m: {k: x["outcome"][k] for k in ("recall_known", "false_accept_rate", "precision")}
                                  for m, x in r["modes"].items()},
                      # what policy.decision: evidence would do on these crops (null: too few to fit)
                      "evidence_model": {m: x["evidence"] and {"cut": x["evidence"]["cut"],
                                                               "recall_known": x["evidence"]["recall"],
                                                               "false_accept_rate": x["evidence"]["far"],
                                                               "precision": x["evidence"]["precision"]}
                                         for m, x in r["modes"].items()},
                      "plots": r["plots"]}, indent=2))
    return 0


def cmd_demo(a) -> int:
    from logoscan.demo import run_demo
    from logoscan.log import configure
    configure(level="WARNING")
    r = run_demo(a.workdir, a.images, a.seed, a.engine, a.num_cpus)
    o = r["evaluation"]["by_category"]["overall"]
    return 0 if (o["recall"] or 0) >= 0.9 and (o["precision"] or 0) >= 0.9 else 1


def cmd_evaluate(a) -> int:
    from logoscan.evaluate import evaluate, format_table
    r = evaluate(a.summary, a.truth)
    print(json.dumps(r, indent=2) if a.json else format_table(r))
    return 0


def cmd_train(kind):
    def run(a) -> int:
        from logoscan.log import configure
        configure()
        if kind == "embedder":
            from logoscan.train.embedder import EmbedderTrainConfig as C, train
        else:
            from logoscan.train.detector import DetectorTrainConfig as C, train
        kw = {"config_file": a.config} if kind == "detector" else {}
        print(json.dumps(train(config_io.load(C, a.config, a.set), resume=not a.no_resume, **kw), indent=2))
        return 0
    return run


def _at_least(low: int):
    def check(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"{v} is less than {low}")
        return v
    return check


def _box(text: str) -> tuple[float, float, float, float]:
    try:
        v = tuple(float(x) for x in text.split(","))
    except ValueError:
        v = ()
    if len(v) != 4:  # inside the picture is add_logo's check (it refuses nan and inf too)
        raise argparse.ArgumentTypeError(f"{text!r} is not X1,Y1,X2,Y2 (four numbers, pixels)")
    return v


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="logoscan", description="Scan a product catalog for logos.")
    sub = p.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("gallery", help="manage the reference gallery in Milvus")
    gsub = g.add_subparsers(dest="gcmd", required=True)

    def gallery_flags(x, build=True):
        x.add_argument("--milvus-uri", required=True, help="path/to/x.db (Milvus Lite) or http://host:19530")
        x.add_argument("--collection", required=True, help="the gallery's name (an alias to its current version)")
        if build:
            x.add_argument("--embedder", default="", help="embedder artifact folder or s3:// (default: shipped)")
            x.add_argument("--index-type", default="FLAT", help="Milvus index: FLAT, HNSW, IVF_FLAT, ...")
            x.add_argument("--keep-versions", type=_at_least(1), default=3,
                           help="built versions kept (the current one included); older ones are dropped")
            x.add_argument("--views", default=",".join(DEFAULT_VIEWS),
                           help=f"each reference stored as these views of itself, comma-separated, 'clean' "
                                f"first; of {', '.join(VIEWS)} (default: %(default)s)")

    gb = gsub.add_parser("build", help="embed reference logos into a new gallery version and switch to it")
    gb.add_argument("--refs", required=True, help="references Parquet file, folder or s3:// prefix")
    gallery_flags(gb)
    gb.set_defaults(fn=cmd_gallery_build)

    ga = gsub.add_parser("add", help="add a new logo to the references and build a new gallery version")
    ga.add_argument("--refs", required=True, help="references Parquet folder (a new part is added) or file")
    ga.add_argument("--image", required=True, help="the logo's picture (path or s3://)")
    ga.add_argument("--label", required=True, help="the class the logo belongs to, e.g. fsc-mix")
    ga.add_argument("--category", required=True, help="e.g. sustainability, prohibited, brand")
    ga.add_argument("--text", help="the words in the mark (for OCR fusion)")
    ga.add_argument("--logo-id", help="default: <label>-<hash of the picture>")
    ga.add_argument("--box", type=_box, metavar="X1,Y1,X2,Y2",
                    help="store only this region of the picture (pixels): a photo of the mark in the wild, added "
                         "beside its clean logo under the same --label (docs/bench/embedder_real.md)")
    ga.add_argument("--no-build", action="store_true", help="only add the reference")
    gallery_flags(ga)
    ga.set_defaults(fn=cmd_gallery_add)

    gi = gsub.add_parser("ingest", help="reviewer decisions: confirmed crops become references, rejected ones "
                                        "impostor crops for the next calibration")
    gi.add_argument("--decisions", required=True,
                    help="Parquet: item_id, logo_id, decision (confirm|reject), reviewer, decided_at")
    gi.add_argument("--run", required=True, help="the run the reviewers decided on: OUT, OUT/runs/<run_id> or "
                                                 "its summary.json")
    gi.add_argument("--run-id", help="with --run OUT: which run (default: the newest published)")
    gi.add_argument("--refs", required=True, help="references to add confirmed crops to")
    gi.add_argument("--crops", required=True, help="calibration crops folder to add rejected crops to")
    gi.add_argument("--no-build", action="store_true", help="do not build a new gallery version")
    gallery_flags(gi)
    gi.set_defaults(fn=cmd_gallery_ingest)

    gv = gsub.add_parser("versions", help="the built versions of a gallery, newest first")
    gallery_flags(gv, build=False)
    gv.set_defaults(fn=cmd_gallery_versions)

    gw = gsub.add_parser("switch", help="point the gallery at another built version (rollback)")
    gw.add_argument("--to", required=True, help="a gallery_version or collection from `gallery versions`")
    gallery_flags(gw, build=False)
    gw.set_defaults(fn=cmd_gallery_switch)

    rp = sub.add_parser("report", help="static HTML review pages for a run: one per queue, pictures first")
    rp.add_argument("run_output", help="OUT, OUT/runs/<run_id> or its summary.json")
    rp.add_argument("--out", help="folder for the pages (default: RUN/report next to summary.json)")
    rp.add_argument("--run-id", help="with OUT: which run (default: the newest published)")
    rp.add_argument("--milvus-uri", help="for the reference pictures (default: the run's own)")
    rp.add_argument("--collection", help="default: the collection the run matched against")
    rp.add_argument("--product-px", type=_at_least(16), default=160, help="product thumbnail size")
    rp.set_defaults(fn=cmd_report)

    rv = sub.add_parser("review", help="review a run's queues in the browser: confirm / reject, stored as "
                                       "decisions `gallery ingest` reads")
    rv.add_argument("run_output", help="OUT, OUT/runs/<run_id> or its summary.json (local or s3://)")
    rv.add_argument("--run-id", help="with OUT: which run (default: the newest published run that flagged something)")
    rv.add_argument("--queue", help="the queue to open first (default: the first)")
    rv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs "
                                                        "reviewer tokens)")
    rv.add_argument("--port", type=_at_least(1), default=8765, help="port (default 8765)")
    rv.add_argument("--tokens-file", help="file of 'name token' lines (also: LOGOSCAN_REVIEW_TOKENS=name=token,…); "
                                          "with tokens each reviewer logs in and is named by their token")
    rv.add_argument("--milvus-uri", help="for the reference pictures (default: the run's own)")
    rv.add_argument("--collection", help="default: the collection the run matched against")
    rv.set_defaults(fn=cmd_review)

    s = sub.add_parser("scan", help="sweep a manifest: detect, embed, match, write review queues",
                       description="Sweep a manifest of product images: fetch, detect logo regions, embed them, "
                                   "match them against the gallery in Milvus and publish review queues, errors and a "
                                   "summary under --out. Exit status: 0 published; 2 bad input or config (nothing "
                                   "published); 3 published, but nothing was scanned or more rows errored than "
                                   "max_error_rate allows.")
    s.add_argument("--manifest", help="manifest Parquet file, folder or s3:// prefix")
    s.add_argument("--milvus-uri", help="the gallery's Milvus: path/to/x.db (Milvus Lite) or http://host:19530")
    s.add_argument("--collection", help="the gallery's name, as given to `gallery build` (default: logos)")
    s.add_argument("--out", help="output folder or s3:// prefix")
    s.add_argument("--config", help="YAML/TOML file with ScanConfig keys (flags win over it)")
    s.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS, else local Ray)")
    s.add_argument("--engine", choices=("ray", "local"),
                   help="ray (default: Ray Data actor pools) or local (in-process, same stages; for debugging)")
    s.add_argument("--run-id", help="default: scan-<UTC time>; re-using one resumes that run if it was cut "
                   "short (same inputs and settings), else replaces its outputs")
    s.add_argument("--incremental", action="store_true",
                   help="reuse the embedding store: only new or changed images are fetched and embedded")
    s.add_argument("--store", help="embedding store folder or s3:// prefix (default: OUT/store)")
    s.add_argument("--max-error-rate", type=float, metavar="SHARE",
                   help="exit 3 (after publishing) when more than this share of rows errored (default 1.0: only "
                        "when nothing at all was scanned)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set detector.score_thresh=0.4")
    s.set_defaults(fn=cmd_scan)

    r = sub.add_parser("rematch", help="match every stored embedding against the gallery as it is now; "
                                       "write only the flags reviewers have not seen (no image is read)")
    r.add_argument("--store", help="the embedding store the scans wrote (e.g. OUT/store)")
    r.add_argument("--milvus-uri", help="the gallery's Milvus: path/to/x.db (Milvus Lite) or http://host:19530")
    r.add_argument("--collection", help="the gallery's name (default: logos)")
    r.add_argument("--out", help="output folder or s3:// prefix for the review queues")
    r.add_argument("--manifest", help="only the (item_id, image_id) rows of this manifest (default: all stored)")
    r.add_argument("--run-id", help="default: rematch-<UTC time>")
    r.add_argument("--previous", help="match version to compare with (default: the last one this store saw)")
    r.add_argument("--all-flags", action="store_true", help="write every flag, not only the new ones")
    r.add_argument("--config", help="YAML/TOML with RematchConfig keys (use the scan's detector/ocr settings)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    r.set_defaults(fn=cmd_rematch)

    st = sub.add_parser("store", help="maintain the embedding store")
    stsub = st.add_subparsers(dest="scmd", required=True)
    sc = stsub.add_parser("compact", help="rewrite each model's parts as one, newest entry per image "
                                          "(prints what it would do; --yes does it)",
                          description="Rewrite each key folder's region parts as one part holding the newest "
                                      "entry of each image. Without --yes it only prints what it would keep, drop "
                                      "and delete.")
    sc.add_argument("--store", required=True, help="the embedding store (folder or s3:// prefix), e.g. OUT/store")
    sc.add_argument("--manifest", help="keep only the images of this manifest (drop products that left)")
    sc.add_argument("--keep-only", metavar="KEY", help="delete every key folder but this one (old models); KEY as "
                    "scans print it in summary.json store.key, e.g. detector-v2+embedder-v2.d29ecef7")
    sc.add_argument("--yes", action="store_true", help="do it (default: a dry run that changes nothing)")
    sc.set_defaults(fn=cmd_store_compact)

    c = sub.add_parser("calibrate", help="per-category/class thresholds for a gallery from labelled crops")
    c.add_argument("--crops", help="labelled crops Parquet: image_uri, label (null = must not be flagged), "
                                   "optional box, kind, ocr_text")
    c.add_argument("--milvus-uri", help="the gallery's Milvus: path/to/x.db (Milvus Lite) or http://host:19530")
    c.add_argument("--collection", help="the gallery to calibrate (default: logos)")
    c.add_argument("--out", help="folder or s3:// prefix for calibration.json and the PNG plots")
    c.add_argument("--target-far", type=float, help="share of crops flagged with a wrong label (default 0.01)")
    c.add_argument("--mode", choices=("far", "f1"), help="far: loosest threshold within the target; "
                                                         "f1: best F1 within it")
    c.add_argument("--ocr", action="store_true", help="also calibrate OCR-fused distances (needs the ocr extra)")
    c.add_argument("--detect", action="store_true",
                   help="run the detector on the labelled images and calibrate on its regions (labelled by the "
                        "boxes they overlap; the rest must not be flagged): crops and detector scores as a sweep sees them")
    c.add_argument("--embedder", help="embedder artifact (default: shipped)")
    c.add_argument("--config", help="YAML/TOML file with CalibrateConfig keys (flags win over it)")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    c.set_defaults(fn=cmd_calibrate)

    d = sub.add_parser("demo", help="make sample data, build a gallery, sweep it, print recall/precision")
    d.add_argument("--workdir", default="demo-output", help="where the sample data, gallery and outputs go")
    d.add_argument("--images", type=_at_least(1), default=300, help="sample catalog images to make")
    d.add_argument("--seed", type=int, default=7, help="seed of the sample data")
    d.add_argument("--engine", choices=("ray", "local"), default="ray", help="as for scan")
    d.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray (default: all)")
    d.set_defaults(fn=cmd_demo)

    e = sub.add_parser("evaluate", help="item-level precision/recall of a run against a truth table")
    e.add_argument("--summary", required=True, help="runs/<run_id>/summary.json of the sweep")
    e.add_argument("--truth", required=True, help="Parquet: item_id, label (null = no logo), category")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e.set_defaults(fn=cmd_evaluate)

    for kind in ("embedder", "detector"):
        from logoscan.train.common import add_job_flags
        t = sub.add_parser(f"train-{kind}", help=f"train the {kind} (see jobs/train_{kind}.py)")
        add_job_flags(t)
        t.set_defaults(fn=cmd_train(kind))
    return p


def _describe_subcommands(p: argparse.ArgumentParser) -> None:
    """Each subcommand's help line is its description too (`logoscan scan --help` says what it does)."""
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help for c in action._choices_actions}
            for name, sp in action.choices.items():
                if not sp.description and helps.get(name):
                    sp.description = helps[name][0].upper() + helps[name][1:] + "."
                _describe_subcommands(sp)


KNOWN_ERRORS = (SchemaError, ConfigError, GalleryError, ScanError, OcrUnavailable, StoreError, FeedbackError,
                ReviewError, RendererMissing)


def _message(e: BaseException) -> str:
    from logoscan.runlock import RunLocked
    text = " ".join(str(e).split())
    if isinstance(e, (KNOWN_ERRORS, RunLocked)):
        return text
    if isinstance(e, FileNotFoundError):
        return f"not found: {e.filename or text}" if e.filename or "not found" not in text.lower() else text
    if isinstance(e, IsADirectoryError):
        return f"{e.filename or text} is a folder, expected a file"
    if isinstance(e, NotADirectoryError):
        return f"{e.filename or text}: a file is in the way of a folder"
    if isinstance(e, PermissionError):
        return f"permission denied: {e.filename or text}"
    return f"{type(e).__name__}: {text[:2000]}"


def main(argv=None) -> int:
    p = parser()
    _describe_subcommands(p)
    a = p.parse_args(argv)
    try:
        return a.fn(a)
    except KeyboardInterrupt:
        print("logoscan: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a user sees one line, never a traceback
        if os.environ.get("LOGOSCAN_DEBUG"):
            raise
        from logoscan.runlock import RunLocked
        known = isinstance(e, (*KNOWN_ERRORS, RunLocked, OSError))
        print(f"logoscan: error: {_message(e)}" + ("" if known else " (LOGOSCAN_DEBUG=1 shows the traceback)"),
              file=sys.stderr)
        return 2 if known else 1


if __name__ == "__main__":
    sys.exit(main())
