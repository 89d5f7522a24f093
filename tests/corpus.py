"""A corpus of broken and odd inputs with the verdict each one must get from ingest."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _png(size=(64, 64), colour=(200, 30, 30), mode="RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, colour).save(out, format="PNG")
    return out.getvalue()


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A valid PNG header declaring width x height 1-bit pixels, with a tiny deflated body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    body = zlib.compress(row * 16)  # far fewer rows than declared: never decoded anyway
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def build(root: Path) -> tuple[Path, dict]:
    """Write images and a JSONL manifest under root; return (manifest, expected accounting)."""
    img = root / "img"
    img.mkdir(parents=True)
    ok_in, ok_out = _png(colour=(10, 20, 30)), _png(colour=(30, 20, 10))
    (img / "in.png").write_bytes(ok_in)
    (img / "out.png").write_bytes(ok_out)
    (img / "truncated.png").write_bytes(_png((128, 128))[:60])
    (img / "zero.png").write_bytes(b"")
    (img / "text.png").write_bytes(b"this is not an image at all")
    (img / "bomb.png").write_bytes(png_bomb())
    (img / "tiny.png").write_bytes(_png((8, 8)))
    (img / "wide.png").write_bytes(_png((512, 64)))
    (root.parent / "outside.png").write_bytes(ok_out)
    os.symlink(root.parent / "outside.png", img / "link.png")

    cmyk = io.BytesIO()
    Image.new("CMYK", (64, 64), (0, 255, 255, 0)).save(cmyk, format="JPEG")
    (img / "cmyk.jpg").write_bytes(cmyk.getvalue())
    deep = io.BytesIO()
    Image.fromarray(np.full((64, 64), 32768, dtype=np.uint16)).save(deep, format="PNG")
    (img / "16bit.png").write_bytes(deep.getvalue())
    pal = Image.new("P", (64, 64), 0)
    pal.putpalette([255, 0, 0] + [0, 0, 255] * 255)
    pal.info["transparency"] = 0  # index 0 is transparent: composites to white
    pal.save(img / "palette_alpha.png")
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.new("RGB", (64, 128), (0, 128, 0)).save(rotated, format="JPEG", exif=exif.tobytes())
    (img / "rotated.jpg").write_bytes(rotated.getvalue())
    Image.new("L", (64, 64), 77).save(img / "grey.png")
    os.mkfifo(img / "fifo.png")
    with open(img / "sparse.png", "wb") as f:  # no disk used: a size, not bytes
        f.truncate(65 * 1024 * 1024)
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(img / "rgba.png")

    def edit(instruction="Make it blue.", inp="img/in.png", out="img/out.png", **kw):
        return json.dumps({"task": "edit", "instruction": instruction, "input_image": inp,
                           "output_image": out, **kw}).encode()

    lines: list[tuple[bytes, str]] = [
        (edit(), "ok"),
        (edit(), "duplicate"),  # the same sample again
        (edit(out="img/truncated.png"), "undecodable_image"),
        (edit(out="img/zero.png"), "empty_file"),
        (edit(out="img/text.png"), "undecodable_image"),
        (edit(out="img/bomb.png"), "too_many_pixels"),
        (edit(inp="../outside.png"), "path_outside_source"),
        (edit(inp="/etc/hostname"), "path_outside_source"),
        (edit(inp="img/link.png"), "path_outside_source"),
        (edit(inp="img/missing.png"), "file_not_found"),
        (edit(inp="img"), "not_a_file"),  # a folder where a file belongs: refused without opening
        (edit(inp="img/fifo.png"), "not_a_file"),  # a FIFO: opening it would block for ever
        (edit(inp="img/sparse.png"), "file_too_large"),  # 65 MB by its size, refused before reading
        (edit(inp="img/in\u0000.png"), "bad_path"),  # a NUL in the path
        (edit(inp="https://example.com/a.png"), "remote_not_allowed"),
        (b'{"task": "edit", "instruction": "broken', "bad_json"),
        (b'[1, 2, 3]', "bad_json"),
        (json.dumps({"task": "paint", "instruction": "x", "output_image": "img/out.png"}).encode(), "unknown_task"),
        (json.dumps({"instruction": "x", "output_image": "img/out.png"}).encode(), "missing_field"),
        (json.dumps({"task": "edit", "instruction": "x", "output_image": "img/out.png"}).encode(), "missing_input_image"),
        (json.dumps({"task": "generate", "instruction": "x", "input_image": "img/in.png",
                     "output_image": "img/out.png"}).encode(), "unexpected_input_image"),
        (json.dumps({"task": "generate", "instruction": "x"}).encode(), "missing_output_image"),
        (edit(instruction=""), "empty_instruction"),
        (edit(instruction="\u200b\u200d\ufeff\u2060"), "empty_instruction"),  # invisible characters only
        (edit(instruction="make it\u0000 blue"), "control_characters"),
        (edit(instruction="make it\u001b[31m red"), "control_characters"),  # a terminal escape
        (edit(instruction="\ufeffMake it blue.\r\n  "), "duplicate"),  # BOM, CRLF, trailing space: the same text
        (b'{"task": "edit", "instruction": "a", "instruction": "b", "input_image": "img/in.png", '
         b'"output_image": "img/out.png"}', "duplicate_key"),
        (b"[" * 100_000 + b"]" * 100_000, "bad_json"),  # nesting too deep for the parser
        (edit(instruction=" \t\n "), "empty_instruction"),
        (edit(instruction="word " * 2000), "instruction_too_long"),
        (edit(instruction=17), "bad_field_type"),
        (edit(instruction="caf\u00e9").replace("caf\\u00e9".encode(), "caf".encode() + b"\xff\xfe"), "invalid_utf8"),
        (edit(instruction="\ud800 lone surrogate"), "invalid_utf8"),
        (edit(out="img/tiny.png"), "image_too_small"),
        (edit(out="img/wide.png"), "extreme_aspect_ratio"),
        (edit(instruction="CMYK target", out="img/cmyk.jpg"), "ok"),
        (edit(instruction="16-bit target", out="img/16bit.png"), "ok"),
        (edit(instruction="palette target", out="img/palette_alpha.png"), "ok"),
        (edit(instruction="rotated target", out="img/rotated.jpg"), "ok"),
        (edit(instruction="grey target", out="img/grey.png"), "ok"),
        (edit(instruction="transparent target", out="img/rgba.png"), "ok"),
        (json.dumps({"task": "generate", "instruction": "a red square", "output_image": "img/out.png",
                     "category": "shapes", "id": 7}).encode(), "ok"),
    ]
    manifest = root / "broken.jsonl"
    manifest.write_bytes(b"\n".join(line for line, _ in lines) + b"\n\n")
    verdicts = [v for _, v in lines]
    reasons: dict[str, int] = {}
    for v in verdicts:
        if v not in ("ok", "duplicate"):
            reasons[v] = reasons.get(v, 0) + 1
    expected = {"input": len(lines), "output": verdicts.count("ok"), "duplicates": verdicts.count("duplicate"),
                "quarantined": sum(reasons.values()), "reasons": dict(sorted(reasons.items())),
                "verdicts": verdicts}
    return manifest, expected
