"""Image folders as data sets: ``ROOT/<class>/*``, ``ROOT/train|test/<class>/*`` or per-device folders.

Layouts (checked in this order):

- ``ROOT/devices/<device>/<class>/*`` (+ optional ``ROOT/server/<class>/*``): a
  natural partition, each device trains on its own folder;
- ``ROOT/train/<class>/*`` (+ optional ``ROOT/test/<class>/*``);
- ``ROOT/<class>/*``.

Without a test folder a seeded, stratified share becomes the server's test
set. Every image is brought to one square side (the centre square, resized)
and kept in colour when the data is colour. Files that cannot be decoded are
skipped, counted and named in a warning; everything else that makes the folder
unusable is a one-line :class:`DataError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from data.datasets import Dataset
from data.errors import DataError
from data.images import IMAGE_SUFFIXES, UnreadableImage, decode, default_side, is_colour, read_header, to_grey
from data.spec import Preprocessing, SourceOptions
from data.split import stratified_split

Report = Callable[[str], None]
MAX_NAMED = 5


@dataclass(frozen=True)
class Files:
    """Image files with their class names and (natural partition) device names; -1 for no device."""

    paths: list[Path]
    classes: list[str]
    devices: list[str]


def class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan(folder: Path, device: str = "") -> Files:
    """Every file under ``folder/<class>/``; a class folder without image files is an error."""
    classes = class_folders(folder)
    if not classes:
        raise DataError(f"{folder} holds no class folders; expected {folder}/<class>/<image>.png "
                        f"(image types: {', '.join(IMAGE_SUFFIXES)})")
    paths, names = [], []
    for sub in classes:
        found = sorted(p for p in sub.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DataError(f"class folder {sub} has no images ({', '.join(IMAGE_SUFFIXES)})")
        paths += found
        names += [sub.name] * len(found)
    return Files(paths, names, [device] * len(paths))


def merge(parts: list[Files]) -> Files:
    return Files(sum((p.paths for p in parts), []), sum((p.classes for p in parts), []),
                 sum((p.devices for p in parts), []))


def layout(root: Path) -> tuple[Files, Files | None, str]:
    """Training files, test files (None: split off a share) and the layout's name."""
    if (root / "devices").is_dir():
        devices = class_folders(root / "devices")
        if not devices:
            raise DataError(f"{root / 'devices'} holds no device folders; expected devices/<device>/<class>/*")
        train = merge([scan(d, d.name) for d in devices])
        test = scan(root / "server") if (root / "server").is_dir() else None
        return train, test, "per-device folders"
    if (root / "train").is_dir():
        test = scan(root / "test") if (root / "test").is_dir() else None
        return scan(root / "train"), test, "train/test folders"
    return scan(root), None, "class folders"


def readable(files: Files, report: Report) -> tuple[Files, list]:
    """The files whose headers read, and those headers; the others are named in one warning."""
    kept, headers, bad = [], [], []
    for index, path in enumerate(files.paths):
        try:
            headers.append(read_header(path))
            kept.append(index)
        except UnreadableImage as reason:
            bad.append(f"{path.name} ({reason})")
    if bad:
        report(f"Warning: skipped {len(bad)} unreadable file(s): {', '.join(bad[:MAX_NAMED])}"
               + (f" and {len(bad) - MAX_NAMED} more" if len(bad) > MAX_NAMED else ""))
    return Files([files.paths[i] for i in kept], [files.classes[i] for i in kept],
                 [files.devices[i] for i in kept]), headers


def decode_all(files: Files, side: int, report: Report) -> tuple[np.ndarray, Files]:
    """RGB uint8 (n, side, side, 3) of every file that decodes; the others are skipped and named."""
    images, kept, bad = [], [], []
    for index, path in enumerate(files.paths):
        try:
            images.append(decode(path, side))
            kept.append(index)
        except UnreadableImage as reason:
            bad.append(f"{path.name} ({reason})")
    if bad:
        report(f"Warning: skipped {len(bad)} image(s) that do not decode: {', '.join(bad[:MAX_NAMED])}")
    stack = np.stack(images) if images else np.zeros((0, side, side, 3), np.uint8)
    return stack, Files([files.paths[i] for i in kept], [files.classes[i] for i in kept],
                        [files.devices[i] for i in kept])


def load_image_folder(root: str | Path, options: SourceOptions, report: Report = lambda m: None) -> Dataset:
    """The image folder at ``root`` as a :class:`Dataset` (see the module docstring for layouts)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    train_files, test_files, kind = layout(root)
    train_files, headers = readable(train_files, report)
    if test_files is not None:
        test_files, test_headers = readable(test_files, report)
        headers = headers + test_headers
    if not train_files.paths:
        raise DataError(f"no readable images under {root}")
    side = options.image_size or default_side(headers)
    if len({h.size for h in headers}) > 1 or len({h.mode for h in headers}) > 1:
        report(f"Images of {len({h.size for h in headers})} sizes and modes "
               f"{', '.join(sorted({h.mode for h in headers}))}: each is cropped to its centre square "
               f"and resized to {side}x{side}")
    x_train, train_files = decode_all(train_files, side, report)
    x_test, test_files = decode_all(test_files, side, report) if test_files is not None else (None, None)
    colour = options.color == "rgb" or (options.color == "auto" and is_colour(x_train))
    class_names = tuple(sorted(set(train_files.classes)))
    if len(class_names) < 2:
        raise DataError(f"{root} has a single class ({class_names[0] if class_names else 'none'}); "
                        "classification needs at least two class folders")
    y_train = np.array([class_names.index(c) for c in train_files.classes], np.int32)
    groups = train_files.devices
    if x_test is None:
        train, test = stratified_split(y_train, options.test_fraction, options.seed, stratify=True)
        x_test, y_test = x_train[test], y_train[test]
        x_train, y_train, groups = x_train[train], y_train[train], [groups[i] for i in train]
    else:
        unknown = sorted(set(test_files.classes) - set(class_names))
        if unknown:
            raise DataError(f"test classes {', '.join(unknown)} have no training images")
        y_test = np.array([class_names.index(c) for c in test_files.classes], np.int32)
    if not colour:
        x_train, x_test = to_grey(x_train), to_grey(x_test)
    group_names = tuple(sorted(set(groups))) if kind == "per-device folders" else ()
    mode = "RGB" if colour else "grey"
    return Dataset(
        name=root.name,
        x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
        class_names=class_names,
        preprocessing=Preprocessing(
            kind="image", class_names=class_names, image_size=side, color="rgb" if colour else "grey",
            note=f"{kind}: images cropped to their centre square, resized to {side}x{side} {mode}, "
                 "pixels scaled to [0, 1]",
        ),
        train_groups=np.array([group_names.index(g) for g in groups], np.int32) if group_names else None,
        group_names=group_names,
    )


def encode_image_folder(
    root: str | Path, spec: Preprocessing, report: Report = lambda m: None
) -> tuple[np.ndarray, np.ndarray]:
    """A device's own image folder encoded with the federation's ``spec``: every image of any layout above.

    The images are brought to ``spec``'s side and colour mode and labelled by
    ``spec``'s class names, so every device's inputs match the server's model
    whatever its own files look like; a class the federation does not know is
    a DataError (a device need not hold every class).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    train, test, _ = layout(root)
    files, _ = readable(merge([train] + ([test] if test is not None else [])), report)
    unknown = sorted(set(files.classes) - set(spec.class_names))
    if unknown:
        raise DataError(f"{root}: class folder(s) {', '.join(unknown)} are not classes of this federation "
                        f"({', '.join(spec.class_names)})")
    x, files = decode_all(files, int(spec.image_size or 28), report)
    if not files.paths:
        raise DataError(f"no readable images under {root}")
    y = np.array([spec.class_names.index(c) for c in files.classes], np.int32)
    return (x if spec.color == "rgb" else to_grey(x)), y
