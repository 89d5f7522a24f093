"""A corpus of broken and odd inputs with the verdict each one must get from ingest."""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
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


# --- The same classes of trouble in the other four formats -------------------------------------
# Each case is (format, source_ref, expected fate): "ok" (kept), "duplicate" (dropped as a repeat,
# counted) or the quarantine reason. `build_formats` writes one source per format.


def png_with_junk_exif() -> bytes:
    """A PNG whose eXIf chunk is not TIFF: the pixels decode, the metadata does not."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    plain = _png(colour=(5, 6, 7))
    return plain[:33] + chunk(b"eXIf", b"junkjunkjunk") + plain[33:]  # after the 8-byte magic + IHDR


def _images() -> dict[str, bytes]:
    cmyk = io.BytesIO()
    Image.new("CMYK", (64, 64), (0, 255, 255, 0)).save(cmyk, format="JPEG")
    return {"in": _png(colour=(11, 22, 33)), "out": _png(colour=(33, 22, 11)), "out2": _png(colour=(90, 9, 9)),
            "tiny": _png((8, 8)), "wide": _png((512, 64)), "cut": _png((128, 128))[:60], "junk": b"not an image",
            "bomb": png_bomb(), "exif": png_with_junk_exif(), "cmyk": cmyk.getvalue()}


def _parquet(root: Path, img: dict[str, bytes]) -> tuple[Path, list[tuple[str, str]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / "parquet"
    folder.mkdir(parents=True)
    rows = [  # (task, instruction, input, output, category, fate)
        ("edit", "P: make it blue", img["in"], img["out"], "colour", "ok"),
        ("generate", "P: a red square", None, img["out2"], None, "ok"),
        ("edit", "P: make it blue", img["in"], img["out"], "colour", "duplicate"),
        ("edit", "\ufeffP: make it blue\r\n", img["in"], img["out"], None, "duplicate"),  # BOM, CRLF
        ("edit", "P: undecodable", img["in"], img["junk"], None, "undecodable_image"),
        ("edit", "P: cut png", img["in"], img["cut"], None, "undecodable_image"),
        ("edit", "P: zero bytes", img["in"], b"", None, "empty_file"),
        ("edit", "P: bomb", img["in"], img["bomb"], None, "too_many_pixels"),
        ("edit", "P: junk exif", img["in"], img["exif"], None, "bad_image_metadata"),
        ("edit", "P: tiny", img["in"], img["tiny"], None, "image_too_small"),
        ("edit", "P: wide", img["in"], img["wide"], None, "extreme_aspect_ratio"),
        ("edit", "P: cmyk", img["in"], img["cmyk"], None, "ok"),
        ("edit", None, img["in"], img["out"], None, "missing_field"),
        (None, "P: no task", img["in"], img["out"], None, "missing_field"),
        ("paint", "P: paint", img["in"], img["out"], None, "unknown_task"),
        ("edit", "P: no input", None, img["out"], None, "missing_input_image"),
        ("generate", "P: with input", img["in"], img["out"], None, "unexpected_input_image"),
        ("edit", "P: no output", img["in"], None, None, "missing_output_image"),
        ("edit", "\u200b\u2060 ", img["in"], img["out"], None, "empty_instruction"),
        ("edit", "P: bell\u0007", img["in"], img["out"], None, "control_characters"),
        ("edit", "P " * 3000, img["in"], img["out"], None, "instruction_too_long"),
    ]
    columns = ["task", "instruction", "input_image", "output_image", "category"]
    table = pa.table({c: [r[i] for r in rows] for i, c in enumerate(columns)},
                     schema=pa.schema([("task", pa.string()), ("instruction", pa.string()),
                                       ("input_image", pa.binary()), ("output_image", pa.binary()),
                                       ("category", pa.string())]))
    pq.write_table(table, folder / "a-bytes.parquet", row_group_size=8)
    cases = [(f"a-bytes.parquet:{i}", r[-1]) for i, r in enumerate(rows)]

    # image columns holding paths, resolved against the Parquet folder and confined to it
    (folder / "img").mkdir()
    (folder / "img" / "in.png").write_bytes(img["in"])
    (folder / "img" / "out.png").write_bytes(img["out2"])
    (root / "secret.png").write_bytes(img["out"])
    os.symlink(root / "secret.png", folder / "img" / "link.png")
    os.mkfifo(folder / "img" / "fifo.png")
    paths = [("edit", "P: by path", "img/in.png", "img/out.png", "ok"),
             ("edit", "P: dotdot", "img/in.png", "../secret.png", "path_outside_source"),
             ("edit", "P: link", "img/in.png", "img/link.png", "path_outside_source"),
             ("edit", "P: fifo", "img/in.png", "img/fifo.png", "not_a_file"),
             ("edit", "P: folder", "img/in.png", "img", "not_a_file"),
             ("edit", "P: gone", "img/in.png", "img/gone.png", "file_not_found"),
             ("edit", "P: nul", "img/in.png", "img/o\u0000ut.png", "bad_path"),
             ("edit", "P: remote", "img/in.png", "https://example.com/x.png", "remote_not_allowed")]
    pq.write_table(pa.table({"task": [r[0] for r in paths], "instruction": [r[1] for r in paths],
                             "input_image": [r[2] for r in paths], "output_image": [r[3] for r in paths]}),
                   folder / "b-paths.parquet")
    cases += [(f"b-paths.parquet:{i}", r[-1]) for i, r in enumerate(paths)]

    # a file whose second row group is damaged: the first group's rows stay, the second's are quarantined
    damaged = pa.table({"task": ["edit"] * 4, "instruction": [f"P: damaged {i}" for i in range(4)],
                        "input_image": [img["in"]] * 4, "output_image": [_png(colour=(i, 1, 1)) for i in range(4)]})
    pq.write_table(damaged, folder / "c-damaged.parquet", row_group_size=2, compression="snappy")
    damage_row_group(folder / "c-damaged.parquet", row_group=1, column=3)
    cases += [("c-damaged.parquet:0", "ok"), ("c-damaged.parquet:1", "ok"),
              ("c-damaged.parquet:2", "unreadable_row_group"), ("c-damaged.parquet:3", "unreadable_row_group")]

    # a file whose footer is corrupt: nothing in it can be read, so it is one row standing for all of it
    pq.write_table(damaged, folder / "d-corrupt-footer.parquet")
    raw = bytearray((folder / "d-corrupt-footer.parquet").read_bytes())
    raw[-12:-4] = b"\xff" * 8  # the footer's length and its end: unreadable
    (folder / "d-corrupt-footer.parquet").write_bytes(bytes(raw))
    cases += [("d-corrupt-footer.parquet:0-end", "unreadable_file")]

    # a file in a subfolder resolves image paths against its own folder, and is confined to it
    (folder / "sub" / "img").mkdir(parents=True)
    (folder / "sub" / "img" / "beside.png").write_bytes(_png(colour=(5, 99, 5)))
    pq.write_table(pa.table({"task": ["edit", "edit"], "instruction": ["P: beside", "P: up and over"],
                             "input_image": ["img/beside.png", "img/beside.png"],
                             "output_image": ["img/beside.png", "../img/out.png"]}), folder / "sub" / "e-beside.parquet")
    cases += [("sub/e-beside.parquet:0", "ok"), ("sub/e-beside.parquet:1", "path_outside_source")]
    return folder, cases


def damage_row_group(path: Path, row_group: int, column: int) -> None:
    """Zero the middle of one column chunk's pages: the file still opens, that row group does not read."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata.row_group(row_group).column(column)
    raw = bytearray(path.read_bytes())
    start = meta.dictionary_page_offset if meta.has_dictionary_page else meta.data_page_offset
    raw[start + 40: start + meta.total_compressed_size - 40] = bytes(meta.total_compressed_size - 80)
    path.write_bytes(bytes(raw))


def _hf(root: Path, img: dict[str, bytes]) -> tuple[Path, list[tuple[str, str]]]:
    import datasets

    features = datasets.Features({"task": datasets.Value("string"), "instruction": datasets.Value("string"),
                                  "input_image": datasets.Image(), "output_image": datasets.Image()})
    rows = [("edit", "H: make it blue", img["in"], img["out"], "ok"),
            ("generate", "H: a red square", None, img["out2"], "ok"),
            ("edit", "H: make it blue", img["in"], img["out"], "duplicate"),
            ("edit", "H: make it blue  \n", img["in"], img["out"], "duplicate"),  # trailing whitespace
            ("edit", "H: undecodable", img["in"], img["junk"], "undecodable_image"),
            ("edit", "H: junk exif", img["in"], img["exif"], "bad_image_metadata"),
            ("edit", "H: no input", None, img["out"], "missing_input_image"),
            ("edit", "", img["in"], img["out"], "empty_instruction"),
            ("edit", "H: escape \u001b[2J", img["in"], img["out"], "control_characters"),
            ("edit", "H: tiny", img["in"], img["tiny"], "image_too_small")]
    ds = datasets.Dataset.from_dict(
        {"task": [r[0] for r in rows], "instruction": [r[1] for r in rows],
         "input_image": [{"bytes": r[2], "path": None} if r[2] else None for r in rows],
         "output_image": [{"bytes": r[3], "path": None} for r in rows]}, features=features)
    folder = root / "hf"
    ds.save_to_disk(folder)
    [data] = sorted(folder.glob("*.arrow"))
    cases = [(f"{data.name}:{i}", r[-1]) for i, r in enumerate(rows)]
    # a second data file cut inside its second record batch: the first batch's rows stay, the rest is one row
    import pyarrow as pa
    import pyarrow.ipc as ipc

    more = datasets.Dataset.from_dict(
        {"task": ["edit"] * 3, "instruction": [f"H: more {i}" for i in range(3)],
         "input_image": [{"bytes": img["in"], "path": None}] * 3,
         "output_image": [{"bytes": _png(colour=(1, i, 1)), "path": None} for i in range(3)]},
        features=features).data.table
    stream = pa.BufferOutputStream()
    with ipc.new_stream(stream, more.schema) as writer:
        for batch in more.to_batches(max_chunksize=2):
            writer.write_batch(batch)
    data = stream.getvalue().to_pybytes()
    (folder / "data-extra.arrow").write_bytes(data[: len(data) - 200])
    # Image features holding paths, not bytes (`save_to_disk` embeds the bytes; a hand-written file
    # need not): resolved against the dataset folder and confined to it, as Parquet's are
    (folder / "beside.png").write_bytes(_png(colour=(3, 3, 90)))
    (root / "hf-secret.png").write_bytes(img["out2"])
    by_path = pa.table({"task": ["edit"] * 3, "instruction": ["H: by path", "H: absolute", "H: dotdot"],
                        "input_image": [{"bytes": img["in"], "path": None}] * 3,
                        "output_image": [{"bytes": None, "path": p}
                                         for p in ("beside.png", str(root / "hf-secret.png"), "../hf-secret.png")]},
                       schema=more.schema)
    with ipc.new_stream(folder / "data-paths.arrow", by_path.schema) as writer:
        writer.write_table(by_path)
    state = json.loads((folder / "state.json").read_text())
    state["_data_files"] += [{"filename": "data-extra.arrow"}, {"filename": "data-paths.arrow"}]
    (folder / "state.json").write_text(json.dumps(state))
    cases += [("data-extra.arrow:0", "ok"), ("data-extra.arrow:1", "ok"), ("data-extra.arrow:2-end", "truncated_file"),
              ("data-paths.arrow:0", "ok"), ("data-paths.arrow:1", "path_outside_source"),
              ("data-paths.arrow:2", "path_outside_source")]
    return folder, cases


def _folder(root: Path, img: dict[str, bytes]) -> tuple[Path, list[tuple[str, str]]]:
    folder = root / "folder"
    (root / "secret.txt").write_text("not yours")
    samples = {  # key -> (files, fate); a file given as None is made specially below
        "f00-ok": ({"instruction.txt": b"F: make it blue", "input.png": img["in"], "output.png": img["out"],
                    "category.txt": b"colour\n"}, "ok"),
        "f01-generate": ({"instruction.txt": b"F: a red square", "output.jpg": img["cmyk"]}, "ok"),
        "f02-repeat": ({"instruction.txt": b"F: make it blue", "input.png": img["in"], "output.png": img["out"]},
                       "duplicate"),
        "f03-bom": ({"instruction.txt": b"\xef\xbb\xbfF: make it blue\r\n", "input.png": img["in"],
                     "output.png": img["out"]}, "duplicate"),
        "f04-two-inputs": ({"instruction.txt": b"F: two", "input.png": img["in"], "input.jpg": img["in"],
                            "output.png": img["out"]}, "ambiguous_files"),
        "f05-backup": ({"instruction.txt": b"F: bak", "output.png": img["out"], "output.png.bak": img["out"]},
                       "ambiguous_files"),
        "f06-text-is-folder": ({"instruction.txt": None, "output.png": img["out"]}, "not_a_file"),
        "f07-text-links-out": ({"instruction.txt": None, "output.png": img["out"]}, "path_outside_source"),
        "f08-text-is-fifo": ({"instruction.txt": None, "output.png": img["out"]}, "not_a_file"),
        "f09-image-links-out": ({"instruction.txt": b"F: link", "output.png": None}, "path_outside_source"),
        "f10-image-is-folder": ({"instruction.txt": b"F: dir", "output.png": None}, "not_a_file"),
        "f11-huge-image": ({"instruction.txt": b"F: huge", "output.png": None}, "file_too_large"),
        "f12-bad-utf8": ({"instruction.txt": b"F: caf\xff", "output.png": img["out"]}, "invalid_utf8"),
        "f13-no-output": ({"instruction.txt": b"F: nothing", "input.png": img["in"]}, "missing_output_image"),
        "f14-no-instruction": ({"output.png": img["out"]}, "missing_field"),
        "f15-blank": ({"instruction.txt": b"  \n\t", "output.png": img["out"]}, "empty_instruction"),
        "f16-nul": ({"instruction.txt": b"F: nul\x00", "output.png": img["out"]}, "control_characters"),
        "f17-undecodable": ({"instruction.txt": b"F: junk", "output.png": img["junk"]}, "undecodable_image"),
        "f18-junk-exif": ({"instruction.txt": b"F: exif", "output.png": img["exif"]}, "bad_image_metadata"),
        "f19-bomb": ({"instruction.txt": b"F: bomb", "output.png": img["bomb"]}, "too_many_pixels"),
        "f20-lone-backup": ({"instruction.txt": b"F: lone bak", "output.png.bak": img["out"]}, "unknown_extension"),
        "f21-nan-tiff": ({"instruction.txt": b"F: nan", "output.tif": _nan_tiff()}, "non_finite_pixels"),
    }
    for key, (files, _) in samples.items():
        (folder / key).mkdir(parents=True)
        for name, data in files.items():
            if data is not None:
                (folder / key / name).write_bytes(data)
    (folder / "f06-text-is-folder" / "instruction.txt").mkdir()
    os.symlink(root / "secret.txt", folder / "f07-text-links-out" / "instruction.txt")
    os.mkfifo(folder / "f08-text-is-fifo" / "instruction.txt")
    (root / "secret-image.png").write_bytes(img["out"])
    os.symlink(root / "secret-image.png", folder / "f09-image-links-out" / "output.png")
    (folder / "f10-image-is-folder" / "output.png").mkdir()
    with open(folder / "f11-huge-image" / "output.png", "wb") as f:
        f.truncate(65 * 1024 * 1024)  # sparse: a size, not bytes
    return folder, [(key, fate) for key, (_, fate) in samples.items()]


def _nan_tiff() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((64, 64), np.nan, dtype=np.float32), "F").save(out, format="TIFF")
    return out.getvalue()


def _tar(path: Path, members: list[tuple[str, bytes | str]], end: bool = True) -> None:
    """A tar of (name, bytes) files; (name, "->target") is a symbolic link instead."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data.removeprefix("->")
                tar.addfile(info)
                continue
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = out.getvalue()
    if not end:  # cut exactly after the last member: it streams as complete, only the end is missing
        data = data[: data.rstrip(b"\0").__len__() + (-data.rstrip(b"\0").__len__()) % 512]
    path.write_bytes(data)


def _webdataset(root: Path, img: dict[str, bytes]) -> tuple[Path, list[tuple[str, str]]]:
    folder = root / "wds"
    folder.mkdir()
    sorted_members = [
        ("w00.instruction.txt", b"W: make it blue"), ("w00.input.png", img["in"]), ("w00.output.png", img["out"]),
        ("w01.instruction.txt", b"W: a red square"), ("w01.output.png", img["out2"]),
        ("w02.instruction.txt", b"W: make it blue"), ("w02.input.png", img["in"]), ("w02.output.png", img["out"]),
        ("w03.instruction.txt", b"W: twice"), ("w03.output.png", img["out"]), ("w03.output.png", img["out2"]),
        ("w04.instruction.txt", b"W: two inputs"), ("w04.input.png", img["in"]), ("w04.input.jpg", img["in"]),
        ("w04.output.png", img["out"]),
        ("w05.instruction.txt", b"W: lost target"), ("w05.input.png", img["in"]),
        ("w06.instruction.txt", b"W: caf\xe9"), ("w06.output.png", img["out"]),
        ("w07.instruction.txt", b"W: junk"), ("w07.output.png", img["junk"]),
        ("w08.output.png", img["out"]),
        ("w09.instruction.txt", b"W: exif"), ("w09.output.png", img["exif"]),
        ("w10.instruction.txt", b"\xe2\x80\x8b"), ("w10.output.png", img["out"]),
    ]
    _tar(folder / "a-sorted.tar", sorted_members)
    cases = [("a-sorted.tar:w00", "ok"), ("a-sorted.tar:w01", "ok"), ("a-sorted.tar:w02", "duplicate"),
             ("a-sorted.tar:w03", "duplicate_member"), ("a-sorted.tar:w04", "ambiguous_files"),
             ("a-sorted.tar:w05", "missing_output_image"), ("a-sorted.tar:w06", "invalid_utf8"),
             ("a-sorted.tar:w07", "undecodable_image"), ("a-sorted.tar:w08", "missing_field"),
             ("a-sorted.tar:w09", "bad_image_metadata"), ("a-sorted.tar:w10", "empty_instruction")]
    # members out of key order: grouped by key, so each edit keeps its input image
    _tar(folder / "b-unsorted.tar", [
        ("u1.input.png", img["in"]), ("u2.input.png", img["in"]), ("u1.output.png", _png(colour=(7, 7, 1))),
        ("u2.output.png", _png(colour=(7, 7, 2))), ("u2.instruction.txt", b"W: u2"),
        ("u1.instruction.txt", b"W: u1")])
    cases += [("b-unsorted.tar:u1", "ok"), ("b-unsorted.tar:u2", "ok")]
    # cut inside the third sample: two kept, the one being read and the rest quarantined
    def whole(text: str) -> list[tuple[str, bytes]]:
        return [m for k in range(4) for m in ((f"c{k}.instruction.txt", f"W: {text} {k}".encode()),
                                              (f"c{k}.input.png", img["in"]),
                                              (f"c{k}.output.png", _png(colour=(k, 40, 40))))]
    _tar(folder / "c-cut.tar", whole("cut"))
    data = (folder / "c-cut.tar").read_bytes()
    offset = data.index(b"c2.output.png")  # the header of c2's target, then half of it
    (folder / "c-cut.tar").write_bytes(data[: offset + 300])
    cases += [("c-cut.tar:c0", "ok"), ("c-cut.tar:c1", "ok"), ("c-cut.tar:c2", "truncated_archive"),
              ("c-cut.tar:after:c2", "truncated_archive")]
    # cut exactly at a member boundary, so it streams as whole: only its missing end tells
    _tar(folder / "d-no-end.tar", whole("no end")[:6], end=False)
    cases += [("d-no-end.tar:c0", "ok"), ("d-no-end.tar:c1", "truncated_archive"),
              ("d-no-end.tar:after:c1", "truncated_archive")]
    # a sample whose members are all links (never followed), one with a linked target, one whole
    _tar(folder / "e-links.tar", [
        ("l0.instruction.txt", "->/etc/hostname"), ("l0.output.png", "->/etc/passwd"),
        ("l1.instruction.txt", b"W: linked target"), ("l1.output.png", "->l2.output.png"),
        ("l2.instruction.txt", b"W: whole"), ("l2.output.png", _png(colour=(70, 7, 70)))])
    cases += [("e-links.tar:l0", "link_member"), ("e-links.tar:l1", "link_member"), ("e-links.tar:l2", "ok")]
    return folder, cases


def build_formats(root: Path) -> tuple[list[Path], list[tuple[str, str, str]]]:
    """Sources in four more formats under root; the cases as (source, source_ref, expected fate)."""
    root.mkdir(parents=True, exist_ok=True)
    img = _images()
    sources, cases = [], []
    for build_one in (_parquet, _hf, _folder, _webdataset):
        source, found = build_one(root, img)
        sources.append(source)
        cases += [(str(source), ref, fate) for ref, fate in found]
    return sources, cases
