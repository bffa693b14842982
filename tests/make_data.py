"""Generated data sets for the bring-your-own-data tests: nothing is downloaded, nothing committed."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def fashion_jpeg_folder(root: Path, fashion, count: int = 600, side: int = 20) -> Path:
    """The first ``count`` Fashion-MNIST training images as tinted colour JPEGs in ``root/<class>/``."""
    for i in range(count):
        grey = 255 - fashion.x_train[i]  # dark object on a light background, like a photo
        rgb = np.stack([grey, (grey * 0.8).astype(np.uint8), (grey * 0.6).astype(np.uint8)], -1)
        folder = root / fashion.class_names[fashion.y_train[i]].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).resize((side, side)).save(folder / f"{i}.jpg", quality=90)
    return root


EQUAL_LUMINANCE = {"red": (200, 0, 0), "green": (0, 102, 0)}  # 0.299*200 == 0.587*102 (ITU-R 601)


def colour_only_folder(root: Path, per_class: int = 60, side: int = 12, seed: int = 0) -> Path:
    """Two classes that differ only in hue (same luminance): grey pipelines cannot tell them apart."""
    rng = np.random.default_rng(seed)
    for name, colour in EQUAL_LUMINANCE.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(-10, 11, (side, side, 1))
            pixels = np.clip(np.array(colour)[None, None, :] + noise * (np.array(colour) > 0), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def linear_csv(path: Path, devices: int = 5, per_device: int = 200, seed: int = 0) -> Path:
    """y = 5x + 3 + noise(0.1), rows spread over ``devices`` devices (column ``phone``)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 1.5, devices * per_device)
    frame = pd.DataFrame({"x": x, "y": 5 * x + 3 + rng.normal(0, 0.1, len(x)),
                          "phone": np.repeat([f"phone-{d}" for d in range(devices)], per_device)})
    frame.to_csv(path, index=False)
    return path


def classification_csv(path: Path, rows: int = 600, seed: int = 0) -> Path:
    """Three string classes from two numeric features and a text feature; a ``site`` device column."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, rows)
    centres = np.array([[0, 0], [3, 0], [0, 3]])
    features = centres[label] + rng.normal(0, 0.7, (rows, 2))
    colour = np.where(rng.random(rows) < 0.8, np.array(["warm", "cold", "warm"])[label], "cold")
    frame = pd.DataFrame({"a": features[:, 0], "b": features[:, 1] * 100, "tone": colour,
                          "species": np.array(["setosa", "versicolor", "virginica"])[label],
                          "site": rng.choice(["north", "south", "east"], rows)})
    frame.to_csv(path, index=False)
    return path


def idx_bytes(kind: str, items: np.ndarray) -> bytes:
    """An IDX file's bytes: images (n, h, w) with magic 2051 or labels (n,) with magic 2049."""
    if kind == "images":
        header = (2051).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in items.shape)
    else:
        header = (2049).to_bytes(4, "big") + len(items).to_bytes(4, "big")
    return header + items.astype(np.uint8).tobytes()


def idx_folder(root: Path, count: int = 20, side: int = 28) -> Path:
    """A tiny, well-formed IDX data set (random pixels) with the standard file names."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        images = rng.integers(0, 256, (count, side, side))
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes("images", images)))
        labels = np.arange(count) % 10
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes("labels", labels)))
    return root
