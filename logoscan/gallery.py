"""The reference gallery in Milvus: build it from a references Parquet, search it in batches.

One code path for both deployments: a ``*.db`` path is embedded Milvus Lite (one process owns
the file), an ``http://host:19530`` URI is a Milvus server (many workers search it). The
collection's properties carry the gallery metadata: the embedder version whose space the vectors
live in (a sweep with another embedder refuses to match), the gallery version, the categories.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from logoscan import storage
from logoscan.images import decode
from logoscan.log import get_logger
from logoscan.refviews import DEFAULT_VIEWS, VIEWS, reference_views
from logoscan.schema import validate_references

log = get_logger(__name__)
META_KEY = "logoscan.meta"
VERSION_SEP = "__v"  # gallery `logos` version abc… lives in collection `logos__vabc…`; `logos` is an alias
REF_THUMB_MAX = 65_535  # Milvus VARCHAR limit; a 96 px JPEG in base64 is ~4 KB
BLANK_STD = 2.0  # a reference crop whose every channel varies less than this (of 255) is blank


class GalleryError(RuntimeError):
    pass


class MilvusUnavailable(GalleryError):
    """Milvus stayed unreachable past the sweep's patience: the run stops without publishing."""


def _unreachable(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}"
    return any(t in text for t in ("Fail connecting", "UNAVAILABLE", "unavailable", "Socket closed",
                                   "DEADLINE_EXCEEDED", "Connection refused", "connect", "RpcError"))


def redact(uri: str) -> str:
    """A URI fit for logs: user:password@ removed."""
    from urllib.parse import urlparse
    u = urlparse(uri)
    if u.password or u.username:
        return uri.replace(u.netloc, u.hostname + (f":{u.port}" if u.port else ""), 1)
    return uri


def connect(uri: str):
    from pymilvus import MilvusClient

    if not uri:
        raise GalleryError("no Milvus URI given (a *.db path for Milvus Lite, or http://host:19530)")
    if "://" not in uri:
        os.makedirs(os.path.dirname(os.path.abspath(uri)) or ".", exist_ok=True)
    # Dedicated connections: pymilvus 3.0 keeps shared connections in a registry, and a new
    # client whose predecessor lost its server "recovers" that dead connection instead of
    # dialling again ("Fail connecting to server on 127.0.0.1:…"): reopening a Lite .db more
    # than 30 s after the last client closed, and a sweep started again after a server outage.
    import logging
    lite_log = logging.getLogger("milvus_lite")  # logs its own traceback before raising: ours says it
    level = lite_log.level
    lite_log.setLevel(logging.CRITICAL)
    try:
        return MilvusClient(uri, token=os.environ.get("MILVUS_TOKEN", ""), dedicated=True)
    except Exception as e:  # noqa: BLE001 - pymilvus and milvus-lite raise many types
        why = " ".join(str(e).split())[:300]
        hint = ("a Milvus Lite .db is opened by one process at a time: is another logoscan (or a "
                "`milvus-lite server`) using it? Serve it with `milvus-lite server` and pass its http:// URI"
                if "://" not in uri else "is the server running and reachable at that address?")
        raise MilvusUnavailable(f"cannot open Milvus at {redact(uri)} ({type(e).__name__}: {why}); {hint}") from None
    finally:
        lite_log.setLevel(level)


def release_lite(uri: str) -> None:
    """Let go of a Milvus Lite .db this process opened: milvus-lite keeps its in-process server (and
    the file's lock) after the client closes, until the process exits. A long-running process that
    only read from it (the review server) calls this so that sweeps and builds can open it."""
    if not uri or "://" in uri:
        return
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:
        return
    server_manager_instance.release_server(uri)


def resolve(client, name: str) -> str:
    """The collection an alias points at now (a name that is no alias is its own collection).
    A sweep resolves the alias once, at its start, and matches against that collection to the
    end: a gallery built and switched meanwhile is the next sweep's."""
    if name in client.list_aliases().get("aliases", []):
        return client.describe_alias(name)["collection_name"]
    return name


def read_metadata(client, collection: str) -> dict:
    """The gallery metadata of ``collection`` (an alias or a collection); ``meta["collection"]``
    names the collection actually read."""
    physical = resolve(client, collection)
    if not client.has_collection(physical):
        raise GalleryError(f"Milvus collection {collection!r} does not exist; build it with "
                           "`logoscan gallery build`")
    props = client.describe_collection(physical).get("properties") or {}
    if META_KEY not in props:
        raise GalleryError(f"collection {collection!r} was not built by logoscan (no {META_KEY})")
    return {**json.loads(props[META_KEY]), "collection": physical}


def versions(client, name: str) -> list[dict]:
    """Every built version of gallery ``name`` (collections ``name__<digest>``), newest first,
    with the one the alias points at marked ``current``."""
    current, out = resolve(client, name), []
    for c in client.list_collections():
        if c.startswith(name + VERSION_SEP) or c == name:
            props = client.describe_collection(c).get("properties") or {}
            if META_KEY in props:
                m = json.loads(props[META_KEY])
                out.append({"collection": c, "gallery_version": m["gallery_version"], "built_at": m["built_at"],
                            "references": m["references"], "current": c == current})
    return sorted(out, key=lambda v: v["built_at"], reverse=True)


def load_reference_crops(table: pa.Table, size: int, pad: float, max_pixels: int = 50_000_000
                         ) -> tuple[list[Image.Image], list[str]]:
    """Reference images are logo crops, embedded whole (or the ``box`` of a larger image).
    Returns the crops and the SHA-1 of each image file."""
    # the models (torch, torchvision) only where a gallery is built: a matcher imports this
    # module too, and its workers start 4 s faster without them
    from logoscan.models.embedder import square_crop
    crops, blank, sums = [], [], []
    boxes = table.column("box").to_pylist() if "box" in table.column_names else [None] * len(table)
    for logo_id, uri, box in zip(table.column("logo_id").to_pylist(), table.column("image_uri").to_pylist(), boxes):
        try:
            data = storage.read_bytes(uri)
            sums.append(hashlib.sha1(data).hexdigest())
            arr = decode(data, max_pixels)
        except Exception as e:
            raise GalleryError(f"reference image {uri!r} could not be read: {e}") from e
        im = Image.fromarray(arr)
        b = tuple(box) if box else (0, 0, im.width, im.height)
        crops.append(square_crop(im, b, pad, size))
        if np.asarray(crops[-1], np.float32).std(axis=(0, 1)).max() < BLANK_STD:
            blank.append(logo_id)
    if blank:
        # a blank reference is the nearest neighbour of every plain patch: it would flag them all
        raise GalleryError(f"{len(blank)} reference image(s) show nothing (a single flat colour, e.g. a white "
                           f"logo on white): {blank[:10]}; fix or remove them")
    return crops, sums


def build(refs_uri: str, milvus_uri: str, collection: str, embedder, emb_cfg: dict,
          index_type: str = "FLAT", keep_versions: int = 3, views: tuple[str, ...] = DEFAULT_VIEWS) -> dict:
    """Build gallery ``collection`` from the references at ``refs_uri`` as a new version, without
    touching the version sweeps are reading: the vectors go into a collection of their own
    (``collection__v<digest>``), and only when it is complete and indexed is the alias
    ``collection`` switched to it. The ``keep_versions`` newest versions are kept (a sweep that
    started on an older one can finish). ``views``: each reference is stored as these views of
    itself (`logoscan.refviews`: the clean picture, inverted, on a dark ground, one ink, chrome),
    one vector each, all under its ``logo_id``; a search returns a logo once, at its nearest view.
    Returns the gallery metadata."""
    views = tuple(views)
    if not views or views[0] != "clean" or len(set(views)) != len(views) or set(views) - set(VIEWS):
        raise GalleryError(f"views must start with 'clean' and name each of {', '.join(VIEWS)} at most once; "
                           f"got {', '.join(views) or 'none'}")
    from logoscan.schema import parquet_files
    files = parquet_files(refs_uri, "references")
    tables = []
    for f in files:
        fs, path = storage.resolve(f)
        tables.append(validate_references(pq.read_table(path, filesystem=fs), f))
    table = pa.concat_tables(tables, promote_options="default")
    validate_references(table, refs_uri)  # logo_id unique across files too
    t0 = time.time()
    crops, sums = load_reference_crops(table, emb_cfg["input_size"], emb_cfg["crop_pad"])
    # the version names what went in (references, their images, the embedder), not float bits:
    # the same inputs embedded with another thread count must give the same version
    texts = table.column("text").to_pylist() if "text" in table.column_names else [None] * len(table)
    boxes = table.column("box").to_pylist() if "box" in table.column_names else [None] * len(table)
    digest = hashlib.sha1(emb_cfg["version"].encode() + (b"" if views == ("clean",) else repr(views).encode()))
    for row in sorted(zip(table.column("logo_id").to_pylist(), table.column("label").to_pylist(),
                          table.column("category").to_pylist(), [t or "" for t in texts],
                          [repr(b) for b in boxes], sums)):
        digest.update(repr(row).encode())
    physical = f"{collection}{VERSION_SEP}{digest.hexdigest()[:12]}"
    client = connect(milvus_uri)
    try:
        if client.has_collection(physical) and META_KEY in (client.describe_collection(physical).get("properties") or {}):
            # same inputs, already built: nothing is embedded again, only the alias is pointed at it
            meta = read_metadata(client, physical)
            log.info("gallery.unchanged", gallery=collection, version=meta["gallery_version"])
        else:
            if client.has_collection(physical):  # a build that died before it was complete
                client.drop_collection(physical)
            from logoscan.models.embedder import embed_crops
            vectors = embed_crops(embedder, emb_cfg, [v for c in crops for v in reference_views(c, views)])
            from logoscan.thresholds import gallery_threshold
            cal = gallery_threshold(embedder, emb_cfg, vectors,
                                    [lab for lab in table.column("label").to_pylist() for _ in views])
            meta = {"gallery_version": f"{collection}-{digest.hexdigest()[:12]}",
                    "embedder_version": emb_cfg["version"], "dim": int(vectors.shape[1]),
                    "categories": sorted(set(table.column("category").to_pylist())),
                    "references": len(table), "built_at": datetime.now(timezone.utc).isoformat(),
                    "index_type": index_type, "default_threshold": cal["threshold"], "threshold_calibration": cal,
                    "views": list(views)}
            _create(client, physical, meta, table, vectors, texts, [ref_thumbnail(c) for c in crops], index_type)
            meta["calibration"] = _inherit_calibration(client, collection, physical, meta, table)
        _switch(client, collection, physical)
        meta["collection"] = physical
        meta["dropped"] = _prune(client, collection, keep_versions)
    finally:
        client.close()
    log.info("gallery.built", gallery=collection, seconds=round(time.time() - t0, 2), **meta)
    return meta


def _inherit_calibration(client, alias: str, physical: str, meta: dict, table: pa.Table) -> dict | None:
    """A new version built by the same embedder keeps the calibration of the version the alias
    pointed at (after `gallery add` or `ingest`, thresholds would otherwise fall back to the
    default without a word). It is marked inherited, with the labels the calibration never saw;
    those get their category's threshold until `logoscan calibrate` is run again."""
    from logoscan.thresholds import CALIBRATION_KEY, gallery_labels, read_calibration
    try:
        prev = read_metadata(client, alias)
    except GalleryError:
        return None  # the first version: nothing to inherit
    cal = read_calibration(client, prev["collection"], prev)
    if cal is None or prev["embedder_version"] != meta["embedder_version"]:
        return None
    unseen = sorted(set(table.column("label").to_pylist()) - set(gallery_labels(client, prev["collection"])))
    inherited = {**cal, "gallery_version": meta["gallery_version"],
                 "inherited": {"from_gallery_version": cal.get("inherited", {}).get("from_gallery_version",
                                                                                     prev["gallery_version"]),
                               "labels_not_calibrated": unseen, "references_before": prev.get("references"),
                               "references_now": meta["references"]}}
    client.alter_collection_properties(physical, properties={CALIBRATION_KEY: json.dumps(inherited)})
    log.warning("gallery.calibration_inherited", gallery=alias, version=meta["gallery_version"],
                from_version=inherited["inherited"]["from_gallery_version"], labels_not_calibrated=len(unseen),
                note="the previous version's thresholds apply; new labels get their category's threshold. "
                     "Re-run `logoscan calibrate` for this version")
    return {"inherited_from": inherited["inherited"]["from_gallery_version"], "labels_not_calibrated": unseen,
            "note": "re-run `logoscan calibrate`"}


def _create(client, physical: str, meta: dict, table: pa.Table, vectors: np.ndarray, texts: list,
            thumbs: list[str], index_type: str) -> None:
    """One row per reference, keyed by ``logo_id``; with several views, one row per view, keyed
    ``logo_id#view`` (``vid``) with ``logo_id`` a field of its own that searches group by; the
    reference's picture rides on its clean view's row."""
    from pymilvus import DataType, MilvusClient
    views = meta.get("views") or ["clean"]
    schema = MilvusClient.create_schema(auto_id=False)
    if len(views) > 1:
        schema.add_field("vid", DataType.VARCHAR, is_primary=True, max_length=600)
        schema.add_field("logo_id", DataType.VARCHAR, max_length=512)
    else:
        schema.add_field("logo_id", DataType.VARCHAR, is_primary=True, max_length=512)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=meta["dim"])
    for name in ("label", "category", "text"):
        schema.add_field(name, DataType.VARCHAR, max_length=1024)
    schema.add_field("thumbnail", DataType.VARCHAR, max_length=REF_THUMB_MAX)
    client.create_collection(physical, schema=schema)
    rows = []
    refs = zip(table.column("logo_id").to_pylist(), table.column("label").to_pylist(),
               table.column("category").to_pylist(), texts, thumbs)
    for r, (logo_id, lab, cat, t, th) in enumerate(refs):
        for k, view in enumerate(views):
            row = {"logo_id": logo_id, "vector": vectors[r * len(views) + k].tolist(), "label": lab,
                   "category": cat, "text": t or "", "thumbnail": th if k == 0 else ""}
            if len(views) > 1:
                row["vid"] = f"{logo_id}#{view}"
            rows.append(row)
    for s in range(0, len(rows), 1000):
        client.insert(physical, rows[s:s + 1000])
    client.flush(physical)
    index_vectors(client, physical, index_type)
    client.alter_collection_properties(physical, properties={META_KEY: json.dumps(meta)})


def _switch(client, alias: str, physical: str) -> None:
    """Point ``alias`` at ``physical``: one call, so a sweep sees the old version or the new one."""
    if alias in client.list_collections():
        # a gallery built before versions existed: a real collection under the alias's name
        log.warning("gallery.unversioned_dropped", collection=alias,
                    note="replaced by an alias to the new version; a sweep reading it now fails")
        client.drop_collection(alias)
    current = resolve(client, alias)
    if current == alias:  # no alias yet
        client.create_alias(physical, alias)
    elif current != physical:
        client.alter_alias(physical, alias)


def switch(milvus_uri: str, name: str, to: str) -> dict:
    """Point gallery ``name`` at one of its built versions (a gallery_version or a collection
    name): a rollback is one alias switch, nothing is rebuilt."""
    client = connect(milvus_uri)
    try:
        found = [v for v in versions(client, name) if to in (v["gallery_version"], v["collection"])]
        if not found:
            raise GalleryError(f"gallery {name!r} has no version {to!r}; it has "
                               f"{[v['gallery_version'] for v in versions(client, name)]}")
        _switch(client, name, found[0]["collection"])
        log.info("gallery.switched", gallery=name, to=found[0]["gallery_version"], collection=found[0]["collection"])
        return found[0]
    finally:
        client.close()


def _prune(client, alias: str, keep: int) -> list[str]:
    old = [v["collection"] for v in versions(client, alias) if not v["current"]][max(keep - 1, 0):]
    for c in old:
        client.drop_collection(c)
    if old:
        log.info("gallery.pruned", collection=alias, dropped=old, kept=keep)
    return old


def ref_thumbnail(crop: Image.Image, px: int = 96) -> str:
    """A reference's picture for reviewers (the HTML report): a small JPEG, base64."""
    import base64
    import io
    im = crop.convert("RGB")
    im.thumbnail((px, px))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return base64.b64encode(buf.getvalue()).decode()


def reference_thumbnails(milvus_uri: str, collection: str, logo_ids: list[str]) -> dict[str, bytes]:
    """logo_id → JPEG bytes of the reference's picture (those found in the collection)."""
    import base64
    if not logo_ids:
        return {}
    client = connect(milvus_uri)
    try:
        physical = resolve(client, collection)
        client.load_collection(physical)
        out = {}
        for s in range(0, len(logo_ids), 500):
            ids = ", ".join(json.dumps(i) for i in logo_ids[s:s + 500])
            for r in client.query(physical, filter=f"logo_id in [{ids}]", output_fields=["logo_id", "thumbnail"]):
                if r.get("thumbnail"):
                    out[r["logo_id"]] = base64.b64decode(r["thumbnail"])
        return out
    finally:
        client.close()


INDEX_PARAMS = {"HNSW": {"M": 16, "efConstruction": 200}, "HNSW_SQ": {"M": 16, "efConstruction": 200},
                "IVF_FLAT": {"nlist": 128}, "IVF_SQ8": {"nlist": 128}}


def index_vectors(client, collection: str, index_type: str) -> None:
    """Index the vectors once they are inserted and flushed. An HNSW index declared when the
    collection was created left Milvus Lite searching 100k flushed vectors at 213 queries/s
    (slower than FLAT's 341); built after the flush it answered 2,275 (docs/bench/milvus_index.md)."""
    index = client.prepare_index_params()
    # a Milvus server refuses HNSW / IVF without their build parameters (Milvus Lite has defaults)
    params = INDEX_PARAMS.get(index_type.upper(), {})
    index.add_index(field_name="vector", index_type=index_type, metric_type="COSINE", params=params)
    client.create_index(collection, index)


def add_distractors(db: str, collection: str, n: int, dim: int, seed: int = 0) -> None:
    """Benchmarks: ``n`` random unit vectors added as references (label "distractor-<i>",
    category "distractor"), the search cost of a large gallery without embedding 100,000 logos.
    The collection is indexed again (same index type) over all its vectors."""
    rng = np.random.default_rng(seed)
    client = connect(db)
    try:
        collection = resolve(client, collection)
        index_type = client.describe_index(collection, "vector")["index_type"]
        client.release_collection(collection)
        client.drop_index(collection, "vector")  # indexed again below, over all vectors
        for s in range(0, n, 5000):
            v = rng.standard_normal((min(5000, n - s), dim)).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            client.insert(collection, [{"logo_id": f"distractor-{s + i}", "vector": row.tolist(),
                                        "label": f"distractor-{s + i}", "category": "distractor", "text": "",
                                        "thumbnail": ""}
                                       for i, row in enumerate(v)])
        client.flush(collection)
        index_vectors(client, collection, index_type)
    finally:
        client.close()


def _patiently(uri: str, unavailable_s: float | None, what: str, call, between=None):
    """``call()``; a Milvus server that does not answer (starting, restarting, a network
    partition) is tried again with backoff (``between()`` before each retry) for up to
    ``unavailable_s``; then MilvusUnavailable. Lite, and errors that are not an outage, raise at once."""
    t0, attempt = time.time(), 0
    while True:
        try:
            return call()
        except Exception as e:  # noqa: BLE001
            waited = time.time() - t0
            if "://" not in uri or not _unreachable(e):
                raise
            if not unavailable_s or waited >= unavailable_s:
                raise MilvusUnavailable(
                    f"Milvus at {redact(uri)} did not {what} for {waited:.0f} s "
                    f"(limit match.unavailable_s={unavailable_s}): {str(e)[:300]}") from e
            pause = min(0.5 * 2 ** attempt, 8.0, max(unavailable_s - waited, 0.05))
            log.warning("milvus.retry", uri=redact(uri), attempt=attempt + 1, waited_s=round(waited, 1),
                        next_in_s=round(pause, 1), error=str(e)[:200], doing=what)
            time.sleep(pause)
            attempt += 1
            if between is not None:
                between()


class Matcher:
    """Batched nearest-reference search. distance = 1 − cosine similarity (smaller is closer)."""

    def __init__(self, milvus_uri: str, collection: str, expect_embedder: str | None = None,
                 unavailable_s: float | None = None):
        # a matcher actor may start while the server is still busy (a served .db loading its
        # collections on a loaded node): Ray Data fails the whole run on one actor whose
        # __init__ raises, so connecting gets the same patience as a search
        self.client = _patiently(milvus_uri, unavailable_s, "open a connection", lambda: connect(milvus_uri))
        self.meta = read_metadata(self.client, collection)
        self.uri, self.collection, self.unavailable_s = milvus_uri, self.meta["collection"], unavailable_s
        if expect_embedder and self.meta["embedder_version"] != expect_embedder:
            raise GalleryError(
                f"gallery {collection!r} was embedded with {self.meta['embedder_version']!r} but this "
                f"sweep uses {expect_embedder!r}: rebuild the gallery with the same embedder")
        self.client.load_collection(self.collection)
        # a gallery with several views per reference: each logo once, at its nearest view
        self.group = {"group_by_field": "logo_id"} if len(self.meta.get("views") or ["clean"]) > 1 else {}

    def search(self, vectors: np.ndarray, top_k: int) -> list[list[dict]]:
        if len(vectors) == 0:
            return []
        res = self._search_retrying([v.tolist() for v in vectors], top_k)
        return [[{"logo_id": h["entity"].get("logo_id") or h.get("id") or h.get("logo_id"),
                  "label": h["entity"]["label"],
                  "category": h["entity"]["category"], "text": h["entity"].get("text", ""),
                  "distance": float(1.0 - h["distance"])}
                 for h in hits] for hits in res]

    def _search_retrying(self, data: list, top_k: int):
        """A Milvus server that stops answering (restart, network partition) is tried again with
        backoff, on a fresh connection, for up to ``unavailable_s``; then MilvusUnavailable."""
        def search():
            return self.client.search(self.collection, data=data, limit=top_k,
                                      output_fields=["logo_id", "label", "category", "text"],
                                      search_params={"metric_type": "COSINE"}, **self.group)

        return _patiently(self.uri, self.unavailable_s, "answer a search", search, self._reconnect)

    def _reconnect(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            pass
        try:
            self.client = connect(self.uri)
            self.client.load_collection(self.collection)  # a restarted server has it released
        except Exception:  # noqa: BLE001 - still down: the next attempt says so
            pass

    def close(self):
        self.client.close()
