"""Sequence builder: tokenized rows -> model inputs, for one `TokenLayout` and one sequence preset.

    [task][soi][input image][eoi][bos instruction eos pad..L_in] [soi][output image][eoi][bos reasoning eos pad..L_out]

`mmada-parallel-m` (the default) is what the published -M checkpoint was trained on
(`training/train_interleave.py`, read line by line; ../shared/REFERENCE.md):
- task token <|interleave|> for edits and generations alike; a generation's input image is the
  MAGVIT codes of a black image at the tokenize resolution (`blank_image_codes`, made once per
  tokenized version and recorded in its manifest);
- one text length L for both parts (SequenceConfig enforces it);
- CFG dropout drops the instruction and the input image independently: a dropped instruction is
  `bos eos` + eos padding, a dropped image is raw id 0 at every input-image position.
`paraforge` keeps this project's earlier layout: generation has no input image block and uses
<|t2i|>, and CFG dropout removes the instruction and the input image together.

Text parts are eos-padded and the padding is attended to (the published code meant to mask it but
added the mask as 1.0/0.0, so its model saw the padding; the model learns where text ends by
predicting it). Rows of different lengths in one batch (only the paraforge preset makes them) are
right-padded with `pad_id` and `attention_mask` 0, which the model really masks. Targets are the
output image codes and the output text after its bos.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from schemas import SequenceConfig, TokenLayout

SEQUENCE_FILE = "paraforge_sequence.json"  # beside a run's checkpoints and an export's weights


@dataclasses.dataclass
class Batch:
    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L], 1 = real, 0 = batch padding
    image_target: torch.Tensor  # [B, L] bool: output image code positions
    text_target: torch.Tensor  # [B, L] bool: output text positions after bos


@dataclasses.dataclass(frozen=True)
class Dropout:
    """Which conditions a row is trained (or sampled) without."""
    instruction: bool = False
    image: bool = False


KEEP, UNCONDITIONAL = Dropout(), Dropout(True, True)


class SequenceBuilder:
    def __init__(self, layout: TokenLayout, config: SequenceConfig, blank_image_codes: list[int] | None = None):
        self.layout, self.config, self.blank_image_codes = layout, config, blank_image_codes
        self.published = config.preset == "mmada-parallel-m"

    # -- the parts ---------------------------------------------------------------------------
    def text(self, ids: list[int], length: int) -> list[int]:
        if len(ids) > length - 2:  # tokenize keeps text within this contract: longer is a config mismatch
            raise ValueError(f"text of {len(ids)} tokens does not fit a part of {length} (bos + text + eos); "
                             "tokenize and sequence lengths must agree")
        body = [self.layout.bos_id, *ids, self.layout.eos_id]
        return body + [self.layout.eos_id] * (length - len(body))

    def task_token(self, task: str) -> int:
        if task not in ("edit", "generate"):
            raise ValueError(f"unknown task {task!r}")
        return self.layout.t2i_id if task == "generate" and not self.published else self.layout.interleave_id

    def input_image(self, task: str, codes: list[int] | None, drop: bool) -> list[int]:
        """The input image block: `[soi][codes + offset][eoi]`, raw id 0 when dropped, and for a
        published-preset generation the black image's codes; empty for a paraforge generation."""
        layout = self.layout
        if codes is None and task == "generate":
            if not self.published:
                return []
            if self.blank_image_codes is None:
                raise ValueError("the mmada-parallel-m preset writes a generation as an edit of a black image, "
                                 "but no blank image codes were given (tokenize records them in the version)")
            codes = self.blank_image_codes
        if codes is None:
            raise ValueError("an edit row needs input image codes")
        if drop and not self.published:
            return []
        body = [0] * len(codes) if drop else [layout.image_token(c) for c in codes]
        return [layout.soi_id, *body, layout.eoi_id]

    def prefix(self, task: str, instruction_ids: list[int], input_image_codes: list[int] | None,
               drop: Dropout = KEEP) -> list[int]:
        """The input part: `[task]([soi][input image][eoi])[bos instruction eos pad..L_in]`."""
        return ([self.task_token(task)] + self.input_image(task, input_image_codes, drop.image)
                + self.text([] if drop.instruction else instruction_ids, self.config.instruction_len))

    def row(self, row: dict, drop: Dropout = KEEP) -> tuple[list[int], list[int], list[int]]:
        """-> (ids, image-target flags, text-target flags) for one tokenized row."""
        ids = self.prefix(row["task"], row["instruction_ids"], row["input_image_codes"], drop)
        n_input, n_text = len(ids), self.config.reasoning_len
        image = [self.layout.image_token(c) for c in row["output_image_codes"]]
        ids += [self.layout.soi_id, *image, self.layout.eoi_id]
        ids += self.text(row["reasoning_ids"], n_text)
        image_flags = [0] * (n_input + 1) + [1] * len(image) + [0] * (1 + n_text)
        text_flags = [0] * (n_input + len(image) + 3) + [1] * (n_text - 1)
        assert len(ids) == len(image_flags) == len(text_flags)
        return ids, image_flags, text_flags

    def parts(self, row: dict, drop: Dropout = KEEP) -> list[dict]:
        """`row(row, drop)` cut into its named parts with their positions (for `trainer sequence`)."""
        image = self.input_image(row["task"], row["input_image_codes"], drop.image)
        named = [("task", 1)]
        if image:
            what = ("input image (dropped: raw id 0)" if drop.image else
                    "input image (black: a generation)" if row["input_image_codes"] is None else "input image")
            named += [("soi", 1), (what, len(image) - 2), ("eoi", 1)]
        named += [("instruction" + (" (dropped)" if drop.instruction else ""), self.config.instruction_len),
                  ("soi", 1), ("output image [target]", len(row["output_image_codes"])), ("eoi", 1),
                  ("reasoning [target after bos]", self.config.reasoning_len)]
        out, start = [], 0
        for name, length in named:
            out.append({"part": name, "start": start, "end": start + length})
            start += length
        return out

    def collate(self, rows: list[dict], drops: list[Dropout] | None = None) -> Batch:
        built = [self.row(r, drops[i] if drops else KEEP) for i, r in enumerate(rows)]
        width = max(len(ids) for ids, _, _ in built)

        def pad(values: list[int], fill: int) -> list[int]:
            return values + [fill] * (width - len(values))
        return Batch(
            input_ids=torch.tensor([pad(ids, self.layout.pad_id) for ids, _, _ in built]),
            attention_mask=torch.tensor([pad([1] * len(ids), 0) for ids, _, _ in built]),
            image_target=torch.tensor([pad(f, 0) for _, f, _ in built], dtype=torch.bool),
            text_target=torch.tensor([pad(f, 0) for _, _, f in built], dtype=torch.bool),
        )

    def draw_dropout(self, n: int, probability: float, generator: torch.Generator) -> list[Dropout]:
        """CFG dropout for n rows: independent per condition (published) or both together."""
        instruction = (torch.rand(n, generator=generator) < probability).tolist()
        if not self.published:
            return [Dropout(d, d) for d in instruction]
        image = (torch.rand(n, generator=generator) < probability).tolist()
        return [Dropout(a, b) for a, b in zip(instruction, image)]

    # -- saved beside runs and exports --------------------------------------------------------
    def to_dict(self) -> dict:
        return {"token_layout": self.layout.to_dict(), "sequence": dataclasses.asdict(self.config),
                "blank_image_codes": self.blank_image_codes}

    @classmethod
    def from_dict(cls, d: dict) -> "SequenceBuilder":
        return cls(TokenLayout.from_dict(d["token_layout"]), SequenceConfig(**d["sequence"]), d["blank_image_codes"])

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / SEQUENCE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict()))
        return path


def recorded_blank_codes(manifest) -> list[int] | None:
    """The black image's codes a tokenized version recorded (None for versions made before)."""
    return manifest.lineage.get("tokenize", {}).get("blank_image_codes")
