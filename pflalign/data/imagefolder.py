"""A folder of images, one subdirectory per class (torchvision's ``ImageFolder`` layout).

``data.root/<class>/**/<image>``: classes are the subdirectory names in sorted order (label =
position), images are the files under each (recursively) with one of :data:`EXTENSIONS`
(torchvision's list), other files ignored, hidden names skipped. Images are decoded with PIL,
converted by ``data.image_mode`` and resized to ``data.image_size`` (:func:`formats.decode_images`).
A class directory without images is refused, as torchvision does: it would be a class no
client can learn.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from . import formats

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def find(root: Path) -> tuple[list[str], list[Path], np.ndarray]:
    """Class names, image paths and their labels."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"data.root={root} has no class subdirectories (dataset imagefolder: "
                        f"data.root/<class>/<image>)")
    paths, labels = [], []
    for k, name in enumerate(classes):
        found = [f for f in formats.walk(root / name) if f.suffix.lower() in EXTENSIONS]
        if not found:
            raise DataError(f"class directory {root / name} holds no images ({', '.join(EXTENSIONS)})")
        paths += found
        labels += [k] * len(found)
    return classes, paths, np.asarray(labels, dtype=np.int64)


def load(cfg):
    """-> x, y, num_classes, input_shape, None, None (no natural clients)."""
    root = formats.require_root(cfg, "imagefolder")
    classes, paths, y = find(root)
    x = formats.decode_images(paths, lambda i: str(paths[i]), cfg.image_size, cfg.image_mode)
    return x, y, len(classes), tuple(int(d) for d in x.shape[1:]), None, None
