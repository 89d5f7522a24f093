"""Image checks and normalisation for ingest: pure functions over encoded bytes.

Accepted images come out as 8-bit RGB. The common case (an RGB JPEG/PNG/WebP with no EXIF
rotation) keeps its original bytes, so ingest costs one decode per image; anything else
(CMYK, palette, alpha, 16-bit, greyscale, rotated) is converted and re-encoded as PNG.
"""

from __future__ import annotations

import dataclasses
import io
import re
import warnings

import numpy as np
from PIL import Image, ImageOps

# PIL's own bomb guard warns or raises at its own threshold; ours runs first with the configured one.
Image.MAX_IMAGE_PIXELS = None
_KEEP_FORMATS = {"JPEG", "PNG", "WEBP"}
_EXIF_ORIENTATION = 0x0112
_OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")  # "<_io.BytesIO object at 0x7f...>"
_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{8,}\b")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageRules:
    max_pixels: int = 40_000_000  # checked from the header, before any pixel is decoded
    min_side: int = 32
    max_aspect_ratio: float = 4.0


class Rejected(Exception):
    """A row the stage refuses: `reason` is a stable code for the quarantine, the message says why."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def stable_message(e: BaseException, root: str | None = None) -> str:
    """An exception as `TypeName: message` for a quarantine message, with what changes from run to
    run taken out: object reprs and memory addresses, and the absolute folder `root` (paths under it
    come out relative). Quarantine rows are part of a version's content hash."""
    text = str(e)
    if root := (root or "").rstrip("/"):
        text = re.sub(re.escape(root) + r"(?![\w.-])", ".", text.replace(root + "/", ""))
    text = _ADDRESS.sub("<address>", _OBJECT_REPR.sub("", text))
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@dataclasses.dataclass(frozen=True)
class CheckedImage:
    data: bytes  # encoded, decodes to 8-bit RGB
    width: int
    height: int
    converted: bool  # re-encoded because the original was not plain RGB


def check_image(data: bytes, rules: ImageRules) -> CheckedImage:
    """Decode, validate and normalise one encoded image; raise Rejected with a reason code."""
    if not data:
        raise Rejected("empty_file", "image file has zero bytes")
    try:
        image = Image.open(io.BytesIO(data))
    except Exception as e:  # PIL raises many types for foreign bytes
        raise Rejected("undecodable_image", f"not an image: {stable_message(e)}") from None
    width, height = image.size
    if width * height > rules.max_pixels:
        raise Rejected("too_many_pixels",
                            f"{width}x{height} = {width * height} pixels > max_pixels {rules.max_pixels}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
    except Exception as e:
        raise Rejected("undecodable_image", f"decoding failed: {stable_message(e)}") from None
    if image.mode == "F":  # a float image (TIFF): NaN or inf would convert to black, silently
        bad = int(np.count_nonzero(~np.isfinite(np.asarray(image))))
        if bad:
            raise Rejected("non_finite_pixels", f"{bad} of {width * height} float pixels are NaN or infinite")

    try:  # the metadata is parsed lazily, and a junk EXIF block fails here, after the pixels decoded
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
            plain = image.mode == "RGB" and orientation == 1 and image.format in _KEEP_FORMATS
            if not plain:
                image = to_rgb(ImageOps.exif_transpose(image) if orientation != 1 else image)
                width, height = image.size
    except Exception as e:
        raise Rejected("bad_image_metadata", f"EXIF or colour conversion failed: {stable_message(e)}") from None
    if min(width, height) < rules.min_side:
        raise Rejected("image_too_small", f"{width}x{height}: shorter side < min_side {rules.min_side}")
    aspect = max(width, height) / min(width, height)
    if aspect > rules.max_aspect_ratio:
        raise Rejected("extreme_aspect_ratio",
                            f"{width}x{height}: aspect ratio {aspect:.1f} > max_aspect_ratio {rules.max_aspect_ratio}")
    if plain:
        return CheckedImage(data, width, height, converted=False)
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return CheckedImage(out.getvalue(), width, height, converted=True)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; transparency is composited over white, 16-bit is scaled down."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
