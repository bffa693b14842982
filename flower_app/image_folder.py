"""A device's own folder of labelled images -> uint8 arrays like the data set's.

Layout: one sub-folder per class, named by the class index (``0`` ... ``9``) or
the class name (``Sneaker``, ``ankle-boot``; case, spaces, dashes and
underscores ignored). Every PNG/JPEG/WebP/BMP/GIF inside is decoded and turned
into a 28x28 Fashion-MNIST-style picture by the same pipeline the dashboard
uses for uploads (``data.preprocess.preprocess_upload``), so a photo of a
sneaker on a white table works as well as a data set image.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from data.preprocess import ImageError, preprocess_upload, read_limited

LOGGER = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


def _key(name: str) -> str:
    return re.sub(r"[\s_\-/]+", "", name).lower()


def class_index(folder_name: str, class_names: Sequence[str]) -> int | None:
    """The label a class sub-folder stands for, or None when it names no class."""
    if folder_name.isdigit():
        index = int(folder_name)
        return index if index < len(class_names) else None
    keys = [_key(name) for name in class_names]
    key = _key(folder_name)
    return keys.index(key) if key in keys else None


def load_image_folder(folder: str | Path, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """All images under ``folder/<class>/``: uint8 images (n, 28, 28) and int32 labels (n,).

    Raises ``ValueError`` when the folder is missing, a sub-folder names no
    class, or no image can be used; unreadable single images are skipped.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ValueError(f"image folder {root} does not exist")
    images, labels, skipped = [], [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        label = class_index(sub.name, class_names)
        if label is None:
            raise ValueError(
                f"{sub} names no class; use 0..{len(class_names) - 1} or one of: {', '.join(class_names)}"
            )
        for path in sorted(sub.rglob("*")):
            if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                continue
            try:
                image = preprocess_upload(read_limited(path))  # never reads past the upload size limit
            except (ImageError, OSError):
                skipped.append(path.name)
                continue
            if image.blank:  # nothing to learn from
                skipped.append(path.name)
                continue
            images.append(np.clip(np.rint(image.pixels * 255.0), 0, 255).astype(np.uint8))
            labels.append(label)
    if skipped:
        LOGGER.warning("skipped %d unreadable image(s) under %s: %s", len(skipped), root, ", ".join(skipped[:5]))
    if not images:
        raise ValueError(f"no usable images under {root} (expected {root}/<class>/<image>.png)")
    return np.stack(images), np.asarray(labels, np.int32)
