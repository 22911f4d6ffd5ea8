"""When the vector index is built matters in Milvus Lite: queries/s over 100,000 references.

  python jobs/bench_milvus_index.py --write docs/bench/milvus_index.md

Three collections of the same random unit vectors (128-d, COSINE): FLAT declared at creation,
HNSW declared at creation (the index params passed to create_collection, then inserts + flush),
and HNSW built after the inserts and the flush (what `gallery build` does: gallery.index_vectors).
Each answers the same 2,048 random queries, top-2, in batches of 512.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(db: str, index: str, after_flush: bool, n: int, dim: int, queries: np.ndarray) -> float:
    from pymilvus import DataType, MilvusClient

    from logoscan.gallery import connect, index_vectors
    c = connect(db)
    try:
        schema = MilvusClient.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        if after_flush:
            c.create_collection("g", schema=schema)
        else:
            params = c.prepare_index_params()
            params.add_index(field_name="vector", index_type=index, metric_type="COSINE")
            c.create_collection("g", schema=schema, index_params=params)
        rng = np.random.default_rng(0)
        v = rng.standard_normal((n, dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        for s in range(0, n, 5000):
            c.insert("g", [{"id": s + j, "vector": x.tolist()} for j, x in enumerate(v[s:s + 5000])])
        c.flush("g")
        if after_flush:
            index_vectors(c, "g", index)
        c.load_collection("g")
        t = time.perf_counter()
        for s in range(0, len(queries), 512):
            c.search("g", data=queries[s:s + 512].tolist(), limit=2, search_params={"metric_type": "COSINE"})
        return len(queries) / (time.perf_counter() - t)
    finally:
        c.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--references", type=int, default=100_000)
    ap.add_argument("--write")
    a = ap.parse_args()
    dim = 128
    q = np.random.default_rng(1).standard_normal((2048, dim)).astype(np.float32)
    rows = []
    for index, after in (("FLAT", False), ("HNSW", False), ("HNSW", True)):
        work = tempfile.mkdtemp(prefix="milvus-index-")
        try:
            qps = run(str(Path(work) / "g.db"), index, after, a.references, dim, q)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        how = "built after inserts + flush" if after else "declared at creation"
        rows.append(f"| {index} | {how} | {qps:,.0f} |")
        print(rows[-1], flush=True)
    text = "\n".join([
        "# Milvus Lite: when the index is built",
        "",
        f"`python jobs/bench_milvus_index.py --write docs/bench/milvus_index.md`, on this project's 2-core CPU "
        f"machine: {a.references:,} random unit vectors (128-d, COSINE), 2,048 queries, top-2, batches of 512.",
        "",
        "| index | when | queries/s |",
        "|---|---|---|",
        *rows,
        "",
        "An index declared when the collection is created did not speed searches over flushed vectors; "
        "built after the flush it did. `gallery build` inserts, flushes, then indexes (`gallery.index_vectors`).",
    ]) + "\n"
    print(text)
    if a.write:  # the generated part only: the doc's dated sections stay
        from jobs.benchdoc import write_report
        write_report(a.write, text, "jobs/bench_milvus_index.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
