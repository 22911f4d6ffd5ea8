"""Item-level evaluation of a sweep's review queues against a truth table.

Truth: Parquet with ``item_id``, ``label`` (the expected logo class; null/empty for items that
should not be flagged) and optionally ``category``. A prediction is an (item_id, label) pair in a
queue. Per category: precision, recall and false-positive rate (items without that category's
logo that were flagged in it).
"""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from logoscan import storage


def read_flagged(summary_uri: str) -> tuple[dict, pa.Table | None]:
    """A published run's flagged rows; ``summary_uri``: its summary.json, its run folder or OUT
    (the newest published run)."""
    from logoscan.output import find_summary
    from logoscan.schema import SchemaError
    summary_uri = find_summary(summary_uri)
    try:
        summary = json.loads(storage.read_bytes(summary_uri))
        summary["outputs"]["queues"]
    except (ValueError, KeyError, TypeError) as e:
        raise SchemaError(f"{summary_uri}: not a logoscan run summary ({type(e).__name__}: {e})") from None
    tables = []
    for path in summary["outputs"]["queues"].values():
        fs, p = storage.resolve(path)
        tables.append(pq.read_table(p, filesystem=fs, columns=["item_id", "label", "category"]))
    return summary, (pa.concat_tables(tables) if tables else None)


def evaluate(summary_uri: str, truth_uri: str) -> dict:
    summary, flagged = read_flagged(summary_uri)
    from logoscan.schema import read_validated, validate_truth
    truth = read_validated(truth_uri, "truth table", validate_truth).to_pylist()
    items = {r["item_id"] for r in truth}
    true_pairs = {(r["item_id"], r["label"]) for r in truth if r.get("label")}
    cat_of = {r["label"]: r.get("category") for r in truth if r.get("label")}
    pred_pairs = set()
    if flagged is not None:
        for r in flagged.to_pylist():
            pred_pairs.add((r["item_id"], r["label"]))
            cat_of.setdefault(r["label"], r["category"])
    cats = sorted({c for c in cat_of.values() if c})
    rows = {}
    for cat in cats + ["overall"]:
        def keep(pair, cat=cat):
            return cat == "overall" or cat_of.get(pair[1]) == cat
        t = {x for x in true_pairs if keep(x)}
        pr = {x for x in pred_pairs if keep(x)}
        tp = len(t & pr)
        neg_items = items - {i for i, _ in t}
        fp_items = {i for i, _ in pr - t} & neg_items
        rows[cat] = {"truth": len(t), "flagged": len(pr), "tp": tp,
                     "precision": tp / len(pr) if pr else None,
                     "recall": tp / len(t) if t else None,
                     "fpr": len(fp_items) / len(neg_items) if neg_items else None}
    return {"run_id": summary["run_id"], "items": len(items), "by_category": rows}


def format_table(result: dict) -> str:
    def f(v):
        return "-" if v is None else f"{v:.3f}"
    lines = ["| category | truth pairs | flagged pairs | precision | recall | false-positive rate |",
             "|---|---|---|---|---|---|"]
    for cat, r in result["by_category"].items():
        lines.append(f"| {cat} | {r['truth']} | {r['flagged']} | {f(r['precision'])} | "
                     f"{f(r['recall'])} | {f(r['fpr'])} |")
    return "\n".join(lines)
