#!/usr/bin/python3
"""Writes the image fixtures of tests/unit/test_image.c into OUT_DIR, with PIL's own decodes.

For every good image NAME it writes NAME.L and NAME.RGB: the raw bytes of
Image.open(NAME).convert("L") / .convert("RGB") (what torchvision's ImageFolder loader
gives), and a line "NAME H W" in manifest.txt. The C test decodes each file and compares
pixel for pixel. Bad files (bad.txt lists them) must be refused with the file named.
"""
import io
import os
import sys

import numpy as np
from PIL import Image

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(12)


def content(h, w, c):
    """Smooth gradients plus noise, so that JPEG's upsampling and IDCT have work to do."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x + y) * 7) % 256], -1)
    noise = rng.integers(-40, 41, size=(h, w, 3))
    a = np.clip(base + noise, 0, 255).astype(np.uint8)
    return a[..., :c] if c < 3 else a


good = []


def save(name, im, **kw):
    im.save(os.path.join(out, name), **kw)
    good.append(name)


rgb = Image.fromarray(content(23, 37, 3), "RGB")
gray = Image.fromarray(content(23, 37, 1)[..., 0], "L")
alpha = Image.fromarray(rng.integers(0, 256, size=(23, 37), dtype=np.uint8), "L")

save("gray.png", gray)
save("gray_alpha.png", Image.merge("LA", (gray, alpha)))
save("rgb.png", rgb)
save("rgba.png", Image.merge("RGBA", (*rgb.split(), alpha)))
save("palette.png", rgb.quantize(colors=200))
save("palette4.png", rgb.quantize(colors=16), bits=4)
pt = rgb.quantize(colors=64)
save("palette_trns.png", pt, transparency=3)
save("bilevel.png", gray.convert("1"))

save("rgb420.jpg", rgb, quality=90)
save("rgb444.jpg", rgb, quality=75, subsampling=0)
save("rgb422.jpg", rgb, quality=85, subsampling=1)
save("progressive.jpg", rgb, quality=80, progressive=True)
save("gray.jpg", gray, quality=90)
big = Image.fromarray(content(130, 171, 3), "RGB")
save("big.jpeg", big, quality=70)
# for the cropped decodes (test_image's decode_box_matches_full_decode): every subsampling
save("big444.jpg", big, quality=90, subsampling=0)
save("big422.jpg", big, quality=90, subsampling=1)
save("big_progressive.jpg", big, quality=90, progressive=True)
save("big_gray.jpg", big.convert("L"), quality=90)

with open(os.path.join(out, "manifest.txt"), "w") as m:
    for name in good:
        im = Image.open(os.path.join(out, name))
        im.load()
        for mode in ("L", "RGB"):
            with open(os.path.join(out, f"{name}.{mode}"), "wb") as f:
                f.write(im.convert(mode).tobytes())
        m.write(f"{name} {im.height} {im.width}\n")

# Files that must be refused, each with the file named in the message.
jpg = open(os.path.join(out, "rgb420.jpg"), "rb").read()
png = open(os.path.join(out, "rgb.png"), "rb").read()
bad = {
    "truncated.jpg": jpg[: len(jpg) // 2],
    "truncated.png": png[: len(png) // 2],
    "text.jpg": b"this is not an image\n",
    "corrupt.jpg": jpg[:2] + b"\xff\x01" + bytes(range(256)) * 4,
    "empty.png": b"",
}
buf = io.BytesIO()
Image.fromarray((np.arange(23 * 37, dtype=np.uint16) * 50).reshape(23, 37), "I;16").save(buf, "PNG")
bad["deep16.png"] = buf.getvalue()
with open(os.path.join(out, "bad.txt"), "w") as m:
    for name, data in bad.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        m.write(name + "\n")
