"""YOLO-format datasets of labelled photos: the format the real-photo sets come in, and what users
bring (their own labelled catalog photos train the detector the same way).

A dataset folder holds ``images/NAME.{jpg,jpeg,png,webp,bmp}``, ``labels/NAME.txt`` (one line per
box: ``class x_center y_center width height``, all normalised to 0..1) and ``classes.txt`` (the
class names by index). An empty label file is a labelled photo with no logo in it.

Bad input is refused with the file and line: a line without five fields, a number that is not
one, coordinates outside 0..1, an empty box, a class index not in classes.txt. What is only
incomplete is counted and reported (`YoloReport`), never silently dropped: images without a label
file (skipped by default, or used as logo-free photos with ``unlabelled="empty"``) and label files
without an image (ignored: there is nothing to train on).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class YoloFormatError(ValueError):
    """A YOLO dataset that cannot be read as one; the message names the file and line."""


@dataclass(frozen=True)
class YoloItem:
    image: Path
    boxes: np.ndarray          # [K, 4] x1 y1 x2 y2 normalised to 0..1
    classes: tuple[str, ...]   # per box, the class name

    def pixel_boxes(self, w: int, h: int) -> np.ndarray:
        return (self.boxes * np.array([w, h, w, h], np.float32)).astype(np.float32)


@dataclass(frozen=True)
class YoloReport:
    root: str
    images: int                          # image files found
    used: int                            # items the dataset holds
    boxes: int
    empty_label_files: int               # labelled logo-free photos (used, as negatives)
    images_without_labels: tuple[str, ...] = ()
    labels_without_image: tuple[str, ...] = ()
    unlabelled: str = "skip"

    def lines(self) -> list[str]:
        out = [f"{self.root}: {self.used} photos used of {self.images} images, {self.boxes} boxes, "
               f"{self.empty_label_files} labelled logo-free"]
        if self.images_without_labels:
            what = "used as logo-free" if self.unlabelled == "empty" else "skipped"
            out.append(f"  {len(self.images_without_labels)} images without a label file ({what}), "
                       f"e.g. {', '.join(self.images_without_labels[:3])}")
        if self.labels_without_image:
            out.append(f"  {len(self.labels_without_image)} label files without an image (ignored), "
                       f"e.g. {', '.join(self.labels_without_image[:3])}")
        return out


@dataclass(frozen=True)
class YoloDataset:
    root: Path
    class_names: tuple[str, ...]
    items: tuple[YoloItem, ...]
    report: YoloReport = field(compare=False)


def _classes(root: Path) -> tuple[str, ...]:
    f = root / "classes.txt"
    if not f.is_file():
        raise YoloFormatError(f"{root}: no classes.txt (one class name per line, by index)")
    names = tuple(line.strip() for line in f.read_text(encoding="utf-8").splitlines() if line.strip())
    if not names:
        raise YoloFormatError(f"{f}: no class names")
    if len(set(names)) != len(names):
        raise YoloFormatError(f"{f}: a class name is listed twice")
    return names


def parse_label_file(path: Path, n_classes: int) -> tuple[np.ndarray, list[int]]:
    """One label file → (boxes [K,4] x1y1x2y2 normalised, class indices). Raises YoloFormatError."""
    boxes, classes = [], []
    for no, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        where = f"{path}:{no}"
        if len(parts) != 5:
            raise YoloFormatError(f"{where}: {len(parts)} fields, expected 5 "
                                  f"(class x_center y_center width height): {line.strip()[:80]!r}")
        if not re.fullmatch(r"\d+", parts[0]):
            raise YoloFormatError(f"{where}: class {parts[0]!r} is not a class index")
        c = int(parts[0])
        if c >= n_classes:
            raise YoloFormatError(f"{where}: class index {c} is not in classes.txt ({n_classes} classes)")
        try:
            cx, cy, w, h = (float(v) for v in parts[1:])
        except ValueError:
            raise YoloFormatError(f"{where}: not a number in {line.strip()[:80]!r}") from None
        if not all(np.isfinite(v) and 0.0 <= v <= 1.0 for v in (cx, cy, w, h)):
            raise YoloFormatError(f"{where}: coordinates must be normalised to 0..1: {line.strip()[:80]!r}")
        if w <= 0 or h <= 0:
            raise YoloFormatError(f"{where}: empty box (width or height 0)")
        boxes.append([max(cx - w / 2, 0.0), max(cy - h / 2, 0.0), min(cx + w / 2, 1.0), min(cy + h / 2, 1.0)])
        classes.append(c)
    return np.array(boxes, np.float32).reshape(-1, 4), classes


def load_yolo(root: str | Path, unlabelled: str = "skip") -> YoloDataset:
    """Read a YOLO dataset folder (see the module doc). ``unlabelled``: what an image without a
    label file is — ``skip`` (counted, not used) or ``empty`` (a logo-free photo)."""
    if unlabelled not in ("skip", "empty"):
        raise ValueError(f"unlabelled must be 'skip' or 'empty', not {unlabelled!r}")
    root = Path(root)
    if not root.is_dir():
        raise YoloFormatError(f"{root}: not a folder")
    names = _classes(root)
    img_dir, lab_dir = root / "images", root / "labels"
    if not img_dir.is_dir():
        raise YoloFormatError(f"{root}: no images/ folder")
    images = {p.stem: p for p in sorted(img_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    labels = {p.stem: p for p in sorted(lab_dir.iterdir()) if p.suffix == ".txt"} if lab_dir.is_dir() else {}
    if not images:
        raise YoloFormatError(f"{img_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    items, n_boxes, n_empty, no_label = [], 0, 0, []
    for stem, img in images.items():
        if stem not in labels:
            no_label.append(img.name)
            if unlabelled == "skip":
                continue
            boxes, cls = np.zeros((0, 4), np.float32), []
        else:
            boxes, cls = parse_label_file(labels[stem], len(names))
        n_boxes += len(boxes)
        n_empty += int(len(boxes) == 0)
        items.append(YoloItem(img, boxes, tuple(names[c] for c in cls)))
    orphans = tuple(sorted(labels[s].name for s in labels.keys() - images.keys()))
    report = YoloReport(str(root), len(images), len(items), n_boxes, n_empty, tuple(no_label), orphans,
                        unlabelled)
    return YoloDataset(root, names, tuple(items), report)


def _group(stem: str) -> str:
    """Photos named like ``4_google_0123`` group by their prefix (``4_google``); others are one group."""
    m = re.fullmatch(r"(.*?)[_-]?\d+", stem)
    return m.group(1) if m else ""


def split_heldout(ds: YoloDataset, heldout_classes=(), heldout_share: float = 0.0,
                  items=None) -> tuple[list[YoloItem], list[YoloItem]]:
    """(train, held out). A photo showing any of ``heldout_classes`` is held out whole; of the rest,
    the last ``heldout_share`` of each name group (sorted by the number in the name) is held out as
    one block, so near-copies with neighbouring numbers stay on one side. ``items``: split these
    (e.g. a training part again, for a validation block) instead of the whole dataset."""
    unknown = set(heldout_classes) - set(ds.class_names)
    if unknown:
        raise YoloFormatError(f"{ds.root}: held-out classes not in classes.txt: {sorted(unknown)}")
    held_cls = set(heldout_classes)
    train, held, groups = [], [], {}
    for it in (ds.items if items is None else items):
        if held_cls & set(it.classes):
            held.append(it)
        else:
            groups.setdefault(_group(it.image.stem), []).append(it)
    for g in groups.values():
        g.sort(key=lambda it: (int(re.search(r"(\d+)$", it.image.stem).group(1))
                               if re.search(r"(\d+)$", it.image.stem) else 0, it.image.stem))
        cut = len(g) - int(round(len(g) * heldout_share))
        train += g[:cut]
        held += g[cut:]
    return train, held
