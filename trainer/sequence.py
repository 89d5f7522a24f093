"""Sequence builder: tokenized rows -> model inputs in the -M layout, per `TokenLayout`.

    edit:     [task][soi][input image][eoi][bos instruction eos pad..L_in] [soi][output image][eoi][bos reasoning eos pad..L_out]
    generate: [task][bos instruction eos pad..L_in]                        [soi][output image][eoi][bos reasoning eos pad..L_out]

Text parts are eos-padded to fixed lengths (the -M layout: the model learns where text ends by
predicting the eos padding). The generate layout drops the input image instead of filling it with
zeros as the public code does. Rows of different layouts in one batch are right-padded with
`pad_id` and `attention_mask` 0, which the model masks out of attention. Targets are the output
image codes and the output text after its bos; the input part and the structural tokens are never
noised.
"""

from __future__ import annotations

import dataclasses

import torch

from schemas import TokenLayout


@dataclasses.dataclass(kw_only=True)
class SequenceConfig:
    instruction_len: int = 256  # L_in: bos + instruction + eos, eos-padded
    reasoning_len: int = 256  # L_out: bos + reasoning + eos, eos-padded


@dataclasses.dataclass
class Batch:
    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L], 1 = real, 0 = batch padding
    image_target: torch.Tensor  # [B, L] bool: output image code positions
    text_target: torch.Tensor  # [B, L] bool: output text positions after bos


def _text(ids: list[int], length: int, layout: TokenLayout) -> list[int]:
    if len(ids) > length - 2:  # tokenize quarantines over-long text; a shorter length here is a config error
        raise ValueError(f"text of {len(ids)} tokens does not fit a part of {length} (bos + text + eos): "
                         "raise sequence.instruction_len / sequence.reasoning_len")
    body = [layout.bos_id, *ids, layout.eos_id]
    return body + [layout.eos_id] * (length - len(body))


def build_prefix(task: str, instruction_ids: list[int], input_image_codes: list[int] | None,
                 layout: TokenLayout, cfg: SequenceConfig, drop_condition: bool = False) -> list[int]:
    """The input part: `[task]([soi][input image][eoi])[bos instruction eos pad..L_in]`."""
    ids = [layout.task_id(task)]
    if input_image_codes is not None and not drop_condition:
        ids += [layout.soi_id, *(layout.image_token(c) for c in input_image_codes), layout.eoi_id]
    return ids + _text([] if drop_condition else instruction_ids, cfg.instruction_len, layout)


def build_row(row: dict, layout: TokenLayout, cfg: SequenceConfig, drop_condition: bool = False
              ) -> tuple[list[int], list[int], list[int]]:
    """-> (ids, image-target flags, text-target flags) for one tokenized row. `drop_condition`
    (classifier-free guidance) removes the instruction and, for edits, the input image."""
    ids = build_prefix(row["task"], row["instruction_ids"], row["input_image_codes"], layout, cfg, drop_condition)
    n_input = len(ids)
    image = [layout.image_token(c) for c in row["output_image_codes"]]
    ids += [layout.soi_id, *image, layout.eoi_id]
    ids += _text(row["reasoning_ids"], cfg.reasoning_len, layout)
    image_flags = [0] * (n_input + 1) + [1] * len(image) + [0] * (1 + cfg.reasoning_len)
    text_flags = [0] * (n_input + len(image) + 3) + [1] * (cfg.reasoning_len - 1)
    assert len(ids) == len(image_flags) == len(text_flags)
    return ids, image_flags, text_flags


def collate(rows: list[dict], layout: TokenLayout, cfg: SequenceConfig,
            drop_condition: list[bool] | None = None) -> Batch:
    built = [build_row(r, layout, cfg, bool(drop_condition and drop_condition[i])) for i, r in enumerate(rows)]
    width = max(len(ids) for ids, _, _ in built)
    def pad(values: list[int], fill: int) -> list[int]:
        return values + [fill] * (width - len(values))
    return Batch(
        input_ids=torch.tensor([pad(ids, layout.pad_id) for ids, _, _ in built]),
        attention_mask=torch.tensor([pad([1] * len(ids), 0) for ids, _, _ in built]),
        image_target=torch.tensor([pad(f, 0) for _, f, _ in built], dtype=torch.bool),
        text_target=torch.tensor([pad(f, 0) for _, _, f in built], dtype=torch.bool),
    )
