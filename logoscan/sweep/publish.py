"""The end of a run: its flags as review-queue tables, its errors, the one summary both scan and
rematch write (RUN_SUMMARY_KEYS), the accounting check, and whether a published run still
failed (too many errors)."""
from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timezone

import pyarrow as pa

from logoscan import config_io
from logoscan.schema import FLAGGED
from logoscan.sweep.errors import ScanError
from logoscan.sweep.plan import RunPlan


def table(rows: list[dict], schema: pa.Schema, fill: dict) -> pa.Table:
    cols = {f.name: [r.get(f.name, fill.get(f.name)) for r in rows] for f in schema}
    for name in ("runner_up_label", "ocr_text", "evidence"):
        if name in cols:
            cols[name] = [v or None for v in cols[name]]
    for name in ("runner_up_distance", "margin", "evidence_score"):  # none: null, not NaN
        if name in cols:
            cols[name] = [None if v is None or v != v else v for v in cols[name]]
    return pa.table({k: pa.array(v, type=schema.field(k).type) for k, v in cols.items()}, schema=schema)


def queues(flagged: list[dict], common: dict, manifest: pa.Table | None, carry_columns) -> tuple[dict, dict]:
    flagged.sort(key=lambda r: (r["queue"], str(r["item_id"]), str(r["image_id"]), r["box"]))
    by_queue: dict[str, list] = {}
    for r in flagged:
        by_queue.setdefault(r["queue"], []).append(r)
    tables = {q: carry(table(rows, FLAGGED, common), manifest, carry_columns) for q, rows in by_queue.items()}
    return tables, by_queue


def ledger_rows(flagged: list[dict], content: dict) -> list[dict]:
    """The store's flag ledger (STORE_FLAGS): what reviewers were shown against this gallery."""
    return [{"item_id": r["item_id"], "image_id": r["image_id"],
             "content_key": content.get((r["item_id"], r["image_id"])), "region": int(r["region"]),
             "label": r["label"], "logo_id": r["logo_id"], "distance": float(r["distance"])} for r in flagged]


def carry(table: pa.Table, manifest: pa.Table, columns) -> pa.Table:
    if not columns:
        return table
    lookup = {}
    for row in manifest.select(["item_id", "image_id", *columns]).to_pylist():
        lookup.setdefault((row["item_id"], row["image_id"]), row)
    keys = list(zip(table.column("item_id").to_pylist(), table.column("image_id").to_pylist()))
    for c in columns:
        table = table.append_column(c, pa.array([lookup[k][c] for k in keys],
                                                type=manifest.schema.field(c).type))
    return table


def summary(plan: RunPlan, cfg, t0: float, *, rows_in: int, scanned: int, reused: int, errored: int, regions: int,
            flagged: int, by_queue: dict[str, int], errors_by_stage: dict, stage_seconds: dict, store: dict | None,
            **extra) -> dict:
    """summary.json of a scan or a rematch (RUN_SUMMARY_KEYS, then what each adds). Refuses a run
    whose rows do not add up: rows_in = rows_scanned + rows_reused + rows_errored."""
    if scanned + reused + errored != rows_in:
        raise ScanError(f"accounting broken: {rows_in} rows in, {scanned} scanned, {reused} reused, "
                        f"{errored} errored — refusing to publish a run that lost rows")
    return {
        "run_id": plan.run_id, "run_date": plan.run_date, "started_at": plan.started.isoformat(),
        "finished_at": datetime.now(timezone.utc).isoformat(), "seconds": round(time.time() - t0, 2),
        "rows_in": rows_in, "rows_scanned": scanned, "rows_reused": reused, "rows_errored": errored,
        **{k: v for k, v in extra.items() if k.startswith("rows_")},
        "regions": regions, "flagged": flagged,
        **{k: v for k, v in extra.items() if k.startswith("flagged_")},
        "flagged_by_queue": dict(sorted(by_queue.items())),
        "errors_by_stage": errors_by_stage, "stage_seconds": stage_seconds,
        **{k: v for k, v in extra.items() if not k.startswith(("rows_", "flagged_"))},
        "store": store,
        "versions": plan.versions(cfg.ocr.enabled),
        "config": config_io.to_dict(cfg),
    }


def errors_by_stage(errors: list[dict]) -> dict:
    return dict(Counter(e["stage"] for e in errors))


def too_many_errors(summary: dict, max_error_rate: float) -> str | None:
    """Why a run that published should still exit non-zero: nothing scanned at all (every row
    refused or errored), or more errored rows than ``max_error_rate`` allows. None if neither."""
    rows_in, errored = summary["rows_in"], summary["rows_errored"]
    if not rows_in:
        return None  # a quiet night: an empty run is published and that is fine
    if summary["rows_scanned"] + summary["rows_reused"] == 0:
        return (f"nothing was scanned: all {rows_in} rows were refused or errored "
                f"(errors by stage: {summary['errors_by_stage']}); see {summary['outputs']['errors']}")
    if errored / rows_in > max_error_rate:
        return (f"{errored} of {rows_in} rows errored ({errored / rows_in:.1%}), more than max_error_rate "
                f"{max_error_rate:.1%} (errors by stage: {summary['errors_by_stage']}); see {summary['outputs']['errors']}")
    return None
