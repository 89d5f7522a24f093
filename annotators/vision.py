"""Images as the annotator's VLM sees them: downscaled to a pixel budget, and what they cost in tokens.

Qwen2.5-VL's processor rounds each side to a multiple of 28 and spends one visual token per 28 x 28
pixels, between its `min_pixels` and `max_pixels`. Full-size originals (two ~2.5 MP images are
~6,400 tokens) overflow an engine's `max_model_len`, so each image goes out downscaled to
`image_max_pixels` (the stored images stay as they are), and a prompt that would still not fit is
refused before any request is sent.
"""

from __future__ import annotations

import io
import math

from PIL import Image

PATCH = 28  # pixels per visual token side (Qwen2.5-VL: 14 px patches, merged 2 x 2)
MIN_PIXELS = 4 * PATCH * PATCH  # the processor's floor: 4 tokens
DEFAULT_IMAGE_MAX_PIXELS = 1280 * PATCH * PATCH  # 1,003,520 pixels = 1,280 tokens per image
CHARS_PER_TOKEN = 3.0  # English text runs ~4 characters per token; 3 errs on the long side


def fit_image(data: bytes, max_pixels: int) -> tuple[bytes, int, int]:
    """(encoded image, width, height) with width * height <= max_pixels, aspect kept; the original
    bytes when they already fit."""
    image = Image.open(io.BytesIO(data))
    width, height = image.size
    if width * height <= max_pixels:
        return data, width, height
    scale = math.sqrt(max_pixels / (width * height))
    size = (max(1, int(width * scale)), max(1, int(height * scale)))
    out = io.BytesIO()
    image.convert("RGB").resize(size, Image.BICUBIC).save(out, format="JPEG", quality=95)
    return out.getvalue(), *size


def image_tokens(width: int, height: int, max_pixels: int = DEFAULT_IMAGE_MAX_PIXELS) -> int:
    """Visual tokens Qwen2.5-VL's processor makes of a width x height image (its smart_resize), plus
    the two vision start/end tokens."""
    h, w = max(PATCH, round(height / PATCH) * PATCH), max(PATCH, round(width / PATCH) * PATCH)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = max(PATCH, math.floor(height / beta / PATCH) * PATCH), max(PATCH, math.floor(width / beta / PATCH) * PATCH)
    elif h * w < MIN_PIXELS:
        beta = math.sqrt(MIN_PIXELS / (height * width))
        h, w = math.ceil(height * beta / PATCH) * PATCH, math.ceil(width * beta / PATCH) * PATCH
    return h * w // (PATCH * PATCH) + 2


def prompt_tokens(text_chars: int, image_sizes: list[tuple[int, int]], max_pixels: int) -> int:
    """An upper-leaning estimate of a chat prompt's length in tokens: its text, its images, and a
    few template tokens per turn."""
    return math.ceil(text_chars / CHARS_PER_TOKEN) + sum(image_tokens(w, h, max_pixels) for w, h in image_sizes) + 32
