"""GTSRB, the German Traffic Sign Recognition Benchmark (Stallkamp et al., IJCNN 2011), 43 classes.

Official layout (the ``GTSRB_Final_Training_Images.zip`` / ``GTSRB_Final_Test_Images.zip`` /
``GTSRB_Final_Test_GT.zip`` downloads, unpacked):

* train: ``GTSRB/Final_Training/Images/000NN/GT-000NN.csv`` plus the ``.ppm`` files it lists;
* test: ``GTSRB/Final_Test/Images/*.ppm`` with the ground truth ``GT-final_test.csv`` (from the GT
  zip), looked for in ``Final_Test/Images/``, ``Final_Test/``, ``GTSRB/`` or the folder above.  The
  ``GT-final_test.test.csv`` shipped with the test images has no ``ClassId`` and is not enough.

CSV files are semicolon-separated with a header naming at least
``Filename;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId`` (``Width;Height`` are read if present, unused).
Each image is cropped to its region of interest, taken as the box ``[X1, X2) x [Y1, Y2)`` (this
leaves the "at least 5 pixels" border the dataset description promises on every side) and clipped
to the image, then resized to ``image_size`` (default 32) bilinearly with antialiasing.  Decoding is
one Pillow call per file at load time; the resizing runs batched, one batch per distinct crop size.
Horizontal flips are not allowed (they change the meaning of several signs).

Hostile files (:mod:`.limits`): a CSV line longer than 4,096 characters or a field longer than
1,024 is refused before it is parsed; a ``ClassId`` outside ``[0, 43)`` is refused at its line; a
``Filename`` that is absolute or resolves (following ``..`` and symbolic links) outside the GTSRB
folder is refused and never opened; an image whose header claims more than 4096 x 4096 pixels or
100 x its file size is refused before it is decoded.

The named source ``gtsrb`` looks under a data root for ``GTSRB/``, ``gtsrb/GTSRB/`` or ``gtsrb/``
holding ``Final_Training/Images``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from backdoorkit.data import limits
from backdoorkit.data.imageset import ImageSet
from backdoorkit.data.loading import PathFormat, register_path_format
from backdoorkit.data.sources import DatasetSource, LoadOptions, register_source
from backdoorkit.data.transforms import stack_images
from backdoorkit.errors import DataError

GTSRB_CLASSES = (
    "Speed limit (20km/h)", "Speed limit (30km/h)", "Speed limit (50km/h)", "Speed limit (60km/h)",
    "Speed limit (70km/h)", "Speed limit (80km/h)", "End of speed limit (80km/h)",
    "Speed limit (100km/h)", "Speed limit (120km/h)", "No passing",
    "No passing for vehicles over 3.5 metric tons", "Right-of-way at the next intersection",
    "Priority road", "Yield", "Stop", "No vehicles", "Vehicles over 3.5 metric tons prohibited",
    "No entry", "General caution", "Dangerous curve to the left", "Dangerous curve to the right",
    "Double curve", "Bumpy road", "Slippery road", "Road narrows on the right", "Road work",
    "Traffic signals", "Pedestrians", "Children crossing", "Bicycles crossing", "Beware of ice/snow",
    "Wild animals crossing", "End of all speed and passing limits", "Turn right ahead",
    "Turn left ahead", "Ahead only", "Go straight or right", "Go straight or left", "Keep right",
    "Keep left", "Roundabout mandatory", "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
)  # fmt: skip
COLUMNS = ("Filename", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId")
TEST_GT = "GT-final_test.csv"
DEFAULT_SIZE = 32


@dataclass(frozen=True)
class Annotation:
    """One CSV row: the image file, its region of interest and its class."""

    file: Path
    box: tuple[int, int, int, int]
    label: int


def _contained(root: Path, base: Path, name: str, where: str) -> Path:
    """``base / name`` if it stays inside ``root`` once resolved (no absolute names, no escape)."""
    if not name or Path(name).is_absolute() or "\\" in name or ":" in name:
        raise DataError(f"{where}: file name {name[:80]!r} is not a plain relative path")
    target = (base / name).resolve()
    if not target.is_relative_to(root.resolve()):
        raise DataError(f"{where}: file name {name[:80]!r} leaves the dataset folder {root}")
    return target


def read_annotations(csv_path: Path, root: Path | None = None, base: Path | None = None) -> list[Annotation]:
    """Parse a GTSRB ground-truth CSV.

    File names are relative to ``base`` (default: the CSV's folder) and must stay inside ``root``
    (default: ``base``); labels must be GTSRB class ids.  Lines and fields are length-checked first.
    """
    base = csv_path.parent if base is None else base
    root = base if root is None else root
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{csv_path}: cannot read ({exc})") from None
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if len(line) > limits.MAX_CSV_LINE:
            raise DataError(
                f"{csv_path}: line {number} has {len(line):,} characters (limit {limits.MAX_CSV_LINE:,})"
            )
    try:
        rows = [r for r in csv.reader(lines, delimiter=";") if any(c.strip() for c in r)]
    except csv.Error as exc:
        raise DataError(f"{csv_path}: malformed CSV ({exc})") from None
    if not rows:
        raise DataError(f"{csv_path}: empty CSV file")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise DataError(f"{csv_path}: missing columns {', '.join(missing)} (need {';'.join(COLUMNS)})")
    col = [header.index(c) for c in COLUMNS]
    out = []
    for line, row in enumerate(rows[1:], start=2):
        where = f"{csv_path}: line {line}"
        if len(row) < len(header):
            raise DataError(f"{where} has {len(row)} fields, the header {len(header)}")
        long = next((c for c in row if len(c) > limits.MAX_CSV_FIELD), None)
        if long is not None:
            raise DataError(f"{where}: a field of {len(long):,} characters (limit {limits.MAX_CSV_FIELD:,})")
        try:
            x1, y1, x2, y2, label = (int(row[i]) for i in col[1:])
        except ValueError:
            raise DataError(f"{where}: ROI and ClassId must be integers") from None
        if not 0 <= label < len(GTSRB_CLASSES):
            raise DataError(f"{where}: ClassId {label} out of range [0, {len(GTSRB_CLASSES)})")
        out.append(Annotation(_contained(root, base, row[col[0]].strip(), where), (x1, y1, x2, y2), label))
    return out


def _crop(ann: Annotation) -> np.ndarray:
    try:
        with Image.open(ann.file) as im:
            limits.check_image_header(*im.size, 3, ann.file.stat().st_size, str(ann.file))
            rgb = im.convert("RGB")
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{ann.file}: listed in the CSV but missing") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{ann.file}: cannot read image ({exc})") from None
    w, h = rgb.size
    x1, y1, x2, y2 = ann.box
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
    if x2 <= x1 or y2 <= y1:
        raise DataError(f"{ann.file}: empty region of interest {ann.box} for a {w}x{h} image")
    return np.asarray(rgb.crop((x1, y1, x2, y2)), dtype=np.uint8)


def _test_gt(root: Path) -> Path | None:
    for folder in (root / "Final_Test" / "Images", root / "Final_Test", root, root.parent):
        if (folder / TEST_GT).is_file():
            return folder / TEST_GT
    return None


def split_annotations(root: Path, split: str) -> list[Annotation]:
    """All annotations of a split of the GTSRB folder ``root`` (the one holding ``Final_Training``)."""
    if split == "train":
        images = root / "Final_Training" / "Images"
        if not images.is_dir():
            raise DataError(f"{root}: no Final_Training/Images folder")
        anns: list[Annotation] = []
        for class_dir in sorted(p for p in images.iterdir() if p.is_dir()):
            csv_path = class_dir / f"GT-{class_dir.name}.csv"
            if not csv_path.is_file():
                raise DataError(f"{class_dir}: no {csv_path.name}")
            anns += read_annotations(csv_path, root=root)
        return anns
    gt = _test_gt(root)
    if gt is None:
        raise DataError(
            f"{root}: no {TEST_GT} with test labels (from GTSRB_Final_Test_GT.zip); "
            f"put it in {root / 'Final_Test' / 'Images'}"
        )
    # the GT zip unpacks next to the images or elsewhere: file names are relative to Images/
    return read_annotations(gt, root=root, base=root / "Final_Test" / "Images")


def read_gtsrb(path: Path, split: str, options: LoadOptions) -> ImageSet:
    """Read one split of GTSRB: ROI crops resized to ``image_size`` (default 32), RGB."""
    root = Path(path)
    anns = split_annotations(root, split)
    if not anns:
        raise DataError(f"{root}: no images listed for the {split} split")
    crops = [_crop(a) for a in anns]
    x = stack_images(crops, options.image_size or DEFAULT_SIZE)
    y = torch.tensor([a.label for a in anns], dtype=torch.int64)
    return ImageSet(x, y, GTSRB_CLASSES, f"gtsrb/{split}", hflip=False)


def count_gtsrb(path: Path) -> dict[str, int]:
    """``{split: n}`` from the CSV rows (no image is opened)."""
    root = Path(path)
    out = {"train": len(split_annotations(root, "train"))}
    if _test_gt(root) is not None:
        out["test"] = len(split_annotations(root, "test"))
    return out


def sniff_gtsrb(path: Path) -> bool:
    """A folder holding ``Final_Training/Images``."""
    return path.is_dir() and (path / "Final_Training" / "Images").is_dir()


def locate_gtsrb(root: Path) -> Path | None:
    """``GTSRB/``, ``gtsrb/GTSRB/`` or ``gtsrb/`` under ``root`` if it holds ``Final_Training/Images``."""
    for cand in (root / "GTSRB", root / "gtsrb" / "GTSRB", root / "gtsrb"):
        if sniff_gtsrb(cand):
            return cand
    return None


GTSRB = register_source(
    DatasetSource(
        name="gtsrb",
        description="GTSRB traffic signs, 43 classes, ROI crops resized to 32x32 (official PPM + CSV)",
        hflip=False,
        locate=locate_gtsrb,
        read=read_gtsrb,
    )
)
register_path_format(PathFormat("gtsrb", sniff_gtsrb, read_gtsrb, count=count_gtsrb, priority=40))
