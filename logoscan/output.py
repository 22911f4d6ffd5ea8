"""Write a run's outputs so readers see a complete run or nothing of it.

Layout under OUT (local path or s3:// prefix):
  flagged/queue=<queue>/run_date=<YYYY-MM-DD>/<run_id>.parquet   what reviewers read
  errors/run_date=<YYYY-MM-DD>/<run_id>.parquet                  every row not scanned
  runs/<run_id>/summary.json, config.json, _SUCCESS              _SUCCESS is written last

Everything is first written under OUT/_staging/<run_id>/, then each file is moved into place
(an atomic rename on local disks), then _SUCCESS. A re-run with the same run_id replaces that
run's files, so re-running never duplicates a reviewer's rows.
"""
from __future__ import annotations

import io
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq

from logoscan import storage


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "_"


def queue_collisions(queues) -> list[list[str]]:
    """Groups of different queue names that would be written to the same file (``a/b`` and
    ``a_b`` are both ``queue=a_b``): one would overwrite the other."""
    by_file: dict[str, set] = {}
    for q in queues:
        by_file.setdefault(safe_name(q), set()).add(q)
    return [sorted(v) for v in by_file.values() if len(v) > 1]


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def queue_path(out: str, queue: str, run_date: str, run_id: str) -> str:
    return storage.join(out, "flagged", f"queue={safe_name(queue)}", f"run_date={run_date}",
                        f"{safe_name(run_id)}.parquet")


def errors_path(out: str, run_date: str, run_id: str) -> str:
    return storage.join(out, "errors", f"run_date={run_date}", f"{safe_name(run_id)}.parquet")


def staged(out: str, run_id: str, final: str) -> str:
    """Where ``final`` (a path under ``out``) waits until the run publishes."""
    return storage.join(out, "_staging", safe_name(run_id), final[len(out.rstrip("/")) + 1:])


def begin_staging(out: str, run_id: str) -> None:
    """An empty staging folder for this run (a killed attempt's leftovers are dropped)."""
    storage.delete_dir(storage.join(out, "_staging", safe_name(run_id)))


def write_run(out: str, run_id: str, run_date: str, flagged: dict[str, pa.Table], errors: pa.Table,
              summary: dict, config: dict) -> dict[str, str]:
    clash = queue_collisions(flagged)
    if clash:  # checked at gallery build and scan start too; never overwrite one queue with another
        raise ValueError(f"queues {clash} would be written to the same file")
    begin_staging(out, run_id)
    for queue, table in sorted(flagged.items()):
        storage.write_bytes(staged(out, run_id, queue_path(out, queue, run_date, run_id)), _parquet_bytes(table))
    storage.write_bytes(staged(out, run_id, errors_path(out, run_date, run_id)), _parquet_bytes(errors))
    return publish_staged(out, run_id, run_date, sorted(flagged), summary, config)


def publish_staged(out: str, run_id: str, run_date: str, queues: list[str], summary: dict,
                   config: dict) -> dict[str, str]:
    """Publish a run whose queue files (``queues``) and errors file are staged (``staged``):
    summary and config staged too, a previous attempt's queues this one has none for removed,
    every file moved into place, ``_SUCCESS`` last."""
    clash = queue_collisions(queues)
    if clash:
        raise ValueError(f"queues {clash} would be written to the same file")
    rid = safe_name(run_id)
    run_dir = storage.join(out, "runs", rid)
    outputs = {"queues": {q: queue_path(out, q, run_date, run_id) for q in queues},
               "errors": errors_path(out, run_date, run_id),
               "summary": storage.join(run_dir, "summary.json")}
    summary = {**summary, "outputs": outputs}
    finals = [*outputs["queues"].values(), outputs["errors"], outputs["summary"],
              storage.join(run_dir, "config.json")]
    storage.write_bytes(staged(out, run_id, outputs["summary"]), json.dumps(summary, indent=2, default=str).encode())
    storage.write_bytes(staged(out, run_id, finals[-1]), json.dumps(config, indent=2, default=str).encode())
    # a previous attempt of this run may have published queues this attempt has none for
    storage.delete_file(storage.join(run_dir, "_SUCCESS"))
    for old in _previous_queue_files(out, run_date, rid):
        if old not in finals:
            storage.delete_file(old)
    # publish, marker last
    for final in finals:
        storage.move_file(staged(out, run_id, final), final)
    storage.write_bytes(storage.join(run_dir, "_SUCCESS"), b"")
    storage.delete_dir(storage.join(out, "_staging", rid))
    return outputs


def _previous_queue_files(out: str, run_date: str, rid: str) -> list[str]:
    try:
        found = storage.list_files(storage.join(out, "flagged"), ".parquet")
    except FileNotFoundError:
        return []
    return [f for f in found if f.endswith(f"/run_date={run_date}/{rid}.parquet")]


class RunNotFound(FileNotFoundError):
    pass


def find_summary(path: str, run_id: str | None = None, prefer_flagged: bool = False) -> str:
    """A published run's summary.json, from: that file; a run folder (OUT/runs/<run_id>); or OUT
    itself (the run ``run_id``, else the newest published run; with ``prefer_flagged`` the newest
    that flagged anything, so a later rematch that found nothing new does not hide the night's
    queues). Runs without _SUCCESS are not published and never chosen."""
    path = path.rstrip("/")
    if path.endswith(".json"):
        return path
    fs, p = storage.resolve(path)
    import pyarrow.fs as pafs
    if fs.get_file_info(p + "/summary.json").type == pafs.FileType.File:
        if fs.get_file_info(p + "/_SUCCESS").type != pafs.FileType.File:
            raise RunNotFound(f"{path} has no _SUCCESS: that run was not published")
        return path + "/summary.json"
    runs = storage.join(path, "runs")
    if run_id:
        return find_summary(storage.join(runs, safe_name(run_id)))
    infos = [i for i in fs.get_file_info(pafs.FileSelector(p + "/runs", allow_not_found=True, recursive=True))
             if i.path.endswith("/_SUCCESS")]
    if not infos:
        raise RunNotFound(f"no published run under {path} (expected runs/<run_id>/_SUCCESS)")
    ordered = [storage.join(runs, i.path.rsplit("/", 2)[-2], "summary.json")
               for i in sorted(infos, key=lambda i: i.mtime_ns or 0, reverse=True)]
    if prefer_flagged:
        for uri in ordered:
            try:
                if json.loads(storage.read_bytes(uri)).get("flagged"):
                    return uri
            except (OSError, ValueError):
                continue
    return ordered[0]


def read_queues(summary: dict, columns: list[str] | None = None) -> dict[str, pa.Table]:
    """queue name → that run's flagged rows."""
    out = {}
    for queue, path in sorted(summary["outputs"]["queues"].items()):
        fs, p = storage.resolve(path)
        out[queue] = pq.read_table(p, filesystem=fs, columns=columns)
    return out
