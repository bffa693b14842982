"""Peak memory of preprocessing a 40-megapixel upload: shrunk while decoding vs decoded at full size.

    python -m benchmarks.decode_memory

Each measurement runs in a fresh process (its peak RSS is its own): the
reference decodes the whole picture and converts it at full resolution
(``load_image`` + ``to_grayscale`` + ``to_model_input``, the pipeline before
decode-time shrinking); ``preprocess_upload`` shrinks to
``data.image_decode.WORK_SIDE`` while decoding. Prints the growth of peak RSS of
each for an RGB PNG, an RGBA PNG and a JPEG of 8000x5000 pixels, their ratio,
and one JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

from benchmarks.child import run_child

SIZE = (8000, 5000)  # 40 megapixels, the upload limit
KINDS = ("png-rgb", "png-rgba", "jpeg")


def picture(kind: str) -> bytes:
    """A dark rectangle on a light background, encoded as ``kind``."""
    channels = 4 if kind == "png-rgba" else 3
    pixels = np.full((SIZE[1], SIZE[0], channels), 240, np.uint8)
    pixels[1000:4000, 2000:6000, :3] = 30
    if channels == 4:
        pixels[..., 3] = 255
    buffer = io.BytesIO()
    image = Image.fromarray(pixels)
    if kind == "jpeg":
        image.save(buffer, "JPEG", quality=85)
    else:
        image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def child(path: str, way: str) -> dict:
    from data.preprocess import load_image, preprocess_upload, to_grayscale, to_model_input

    with open(path, "rb") as handle:
        data = handle.read()  # a few hundred KB: the encoded picture, made by the parent
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if way == "full":
        pixels = to_model_input(to_grayscale(load_image(data)))
    else:
        pixels = preprocess_upload(data).pixels
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"way": way, "growth_mb": round((after - before) / 1024, 1),
            "object_pixels": int((pixels > 0.5).sum())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.decode_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("PATH", "WAY"), help=argparse.SUPPRESS)
    parser.add_argument("--make", nargs=2, metavar=("PATH", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.make:  # in its own process too: a child started by a big parent inherits its peak RSS
        with open(args.make[0], "wb") as handle:
            handle.write(picture(args.make[1]))
        return 0
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    results = {}
    folder = tempfile.mkdtemp(prefix="decode-memory-")
    for kind in KINDS:
        path = os.path.join(folder, f"{kind}.img")
        subprocess.run([sys.executable, "-m", "benchmarks.decode_memory", "--make", path, kind], check=True)
        full = run_child("benchmarks.decode_memory", path, "full")
        bounded = run_child("benchmarks.decode_memory", path, "bounded")
        ratio = bounded["growth_mb"] / full["growth_mb"]
        results[kind] = {"full_mb": full["growth_mb"], "bounded_mb": bounded["growth_mb"], "ratio": round(ratio, 3)}
        print(f"{kind:9}: peak RSS growth {full['growth_mb']:7.1f} MB decoded at full size, "
              f"{bounded['growth_mb']:7.1f} MB shrunk while decoding ({ratio:.2f}x)")
    shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps({"benchmark": "decode_memory", "size": SIZE, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
