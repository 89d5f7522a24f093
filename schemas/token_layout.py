"""Special token ids of the MMaDA-8B vocabulary used by the MMaDA-Parallel -M family.

Shards store raw image codes and plain text ids; the trainer maps them into one vocabulary with a
`TokenLayout`, so the same tokenized version can feed a model with another layout.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True)
class TokenLayout:
    text_vocab_size: int = 126464  # LLaDA text ids occupy [0, text_vocab_size)
    image_codebook_size: int = 8192  # MAGVIT-v2 LFQ codes, appended after the text ids
    image_token_offset: int = 126464  # image token id = code + offset
    mask_id: int = 126336
    bos_id: int = 126080  # LLaDA <|startoftext|>
    eos_id: int = 126081  # LLaDA <|endoftext|>; -M pads text with eos
    pad_id: int = 126081
    eot_id: int = 126348  # LLaDA chat end-of-turn; unused by the -M layout, kept for validation
    soi_id: int = 126084
    eoi_id: int = 126085
    t2i_id: int = 126088
    mmu_id: int = 126089
    ipad_id: int = 126093
    r2i_id: int = 126094
    interleave_id: int = 126095
    t2it_id: int = 126096
    # Task tokens. The paper names <|thinkedit|>/<|thinkgen|>, but no released vocabulary has them;
    # the released -M code marks thinking-aware editing with <|interleave|>, and MMaDA's <|t2i|>
    # marks generation.
    edit_task_id: int = 126095
    generate_task_id: int = 126088

    @classmethod
    def compact(cls, text_vocab_size: int, image_codebook_size: int = 8192) -> "TokenLayout":
        """A small vocabulary for tiny models: special ids take the top 16 text ids, so a tokenizer
        with fewer than text_vocab_size - 16 ids fits below them."""
        top = text_vocab_size - 16
        names = ["mask_id", "bos_id", "eos_id", "eot_id", "soi_id", "eoi_id", "t2i_id", "mmu_id", "ipad_id",
                 "r2i_id", "interleave_id", "t2it_id"]
        ids = {name: top + i for i, name in enumerate(names)}
        return cls(text_vocab_size=text_vocab_size, image_codebook_size=image_codebook_size,
                   image_token_offset=text_vocab_size, pad_id=ids["eos_id"], edit_task_id=ids["interleave_id"],
                   generate_task_id=ids["t2i_id"], **ids)

    @property
    def max_text_id(self) -> int:
        """Text ids from the tokenizer must stay below this (the lowest special id of a compact layout)."""
        return min(self.special_ids().values())

    def __post_init__(self) -> None:
        self.validate()

    @property
    def vocab_size(self) -> int:
        return self.text_vocab_size + self.image_codebook_size

    def special_ids(self) -> dict[str, int]:
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name.endswith("_id")
        }

    def validate(self) -> None:
        """Raise ValueError for a layout a model could not be trained with."""
        if self.text_vocab_size <= 0 or self.image_codebook_size <= 0:
            raise ValueError("vocabulary sizes must be positive")
        if self.image_token_offset != self.text_vocab_size:
            raise ValueError(
                f"image_token_offset {self.image_token_offset} must equal text_vocab_size "
                f"{self.text_vocab_size}: image codes are appended right after the text ids"
            )
        for name, value in self.special_ids().items():
            if not 0 <= value < self.text_vocab_size:
                raise ValueError(f"{name}={value} is outside the text vocabulary [0, {self.text_vocab_size})")
        # The structural ids must be distinct (eos doubles as pad in the -M layout), and a task
        # token may reuse one of MMaDA's reserved task tokens but never a structural id.
        structural = {"mask_id", "bos_id", "eos_id", "eot_id", "soi_id", "eoi_id"}
        ids = self.special_ids()
        values = [ids[name] for name in structural]
        if len(set(values)) != len(values):
            raise ValueError(f"structural token ids must be distinct: { {n: ids[n] for n in structural} }")
        if self.pad_id in {ids[n] for n in structural - {"eos_id"}}:
            raise ValueError(f"pad_id {self.pad_id} collides with a structural id other than eos")
        for name in ("edit_task_id", "generate_task_id"):
            if ids[name] in values or ids[name] == self.pad_id:
                raise ValueError(f"{name}={ids[name]} collides with a structural token id")
        if self.edit_task_id == self.generate_task_id:
            raise ValueError("edit and generate task tokens must differ")

    def task_id(self, task: str) -> int:
        if task == "edit":
            return self.edit_task_id
        if task == "generate":
            return self.generate_task_id
        raise ValueError(f"unknown task {task!r}")

    def image_token(self, code):
        """MAGVIT code(s) -> vocabulary id(s); works on ints, numpy arrays and torch tensors."""
        return code + self.image_token_offset

    def image_code(self, token):
        return token - self.image_token_offset

    def is_image_token(self, token):
        return (token >= self.image_token_offset) & (token < self.vocab_size)


MMADA_M = TokenLayout()
