"""Where text ids, special tokens and image codes sit in one model's vocabulary.

Shards store raw image codes and plain text ids; the trainer maps them into a model's vocabulary
with that model's `TokenLayout`, so the same tokenized version can feed models of other layouts.

The published MMaDA code maps a MAGVIT code to `code + len(text tokenizer)` = code + 126349, not
to code + 126464 (LLaDA's padded text vocabulary): the embedding has 134656 rows, of which
126349..134540 are image codes and 134541..134655 are never used. So the offset comes from the
checkpoint's tokenizer and the vocabulary size from its embedding (`from_tokenizer`), never one
from the other.
"""

from __future__ import annotations

import dataclasses

# Token strings a tokenizer may carry for them (small test tokenizers do; the published one does not).
TOKEN_NAMES = {"mask_id": "<|mdm_mask|>", "bos_id": "<|startoftext|>", "eos_id": "<|endoftext|>",
               "eot_id": "<|eot_id|>", "soi_id": "<|soi|>", "eoi_id": "<|eoi|>", "t2i_id": "<|t2i|>",
               "mmu_id": "<|mmu|>", "ipad_id": "[iPAD]", "r2i_id": "<|r2i|>", "interleave_id": "<|interleave|>",
               "t2it_id": "<|t2it|>"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class TokenLayout:
    image_token_offset: int = 126349  # image token id = code + offset; = len(text tokenizer)
    image_codebook_size: int = 8192  # MAGVIT-v2 LFQ codes
    vocab_size: int = 134656  # rows of the embedding and of the output head
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
    interleave_id: int = 126095  # the task token of thinking-aware editing (and, in -M training, generation)
    t2it_id: int = 126096

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_tokenizer(cls, tokenizer, embedding_size: int, image_codebook_size: int = 8192) -> "TokenLayout":
        """The layout of a checkpoint: offset = len(tokenizer), vocabulary = its embedding rows;
        special tokens by name where the tokenizer has them, else the MMaDA ids (the defaults): MMaDA's
        code hard-codes its reserved tokens, which the LLaDA tokenizer holds as unnamed entries."""
        vocab = tokenizer.get_vocab()
        ids = {name: vocab.get(token, getattr(cls, name)) for name, token in TOKEN_NAMES.items()}
        return cls(image_token_offset=len(tokenizer), image_codebook_size=image_codebook_size,
                   vocab_size=embedding_size, pad_id=ids["eos_id"], **ids)

    @classmethod
    def compact(cls, text_vocab_size: int, image_codebook_size: int = 8192) -> "TokenLayout":
        """A small vocabulary for tiny models: special ids take the top 16 text ids."""
        top = text_vocab_size - 16
        names = ["mask_id", "bos_id", "eos_id", "eot_id", "soi_id", "eoi_id", "t2i_id", "mmu_id", "ipad_id",
                 "r2i_id", "interleave_id", "t2it_id"]
        ids = {name: top + i for i, name in enumerate(names)}
        return cls(image_token_offset=text_vocab_size, image_codebook_size=image_codebook_size,
                   vocab_size=text_vocab_size + image_codebook_size, pad_id=ids["eos_id"], **ids)

    @classmethod
    def from_dict(cls, d: dict) -> "TokenLayout":
        return cls(**d)

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @property
    def text_vocab_size(self) -> int:
        """Text ids occupy [0, text_vocab_size): everything below the first image code."""
        return self.image_token_offset

    def special_ids(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name.endswith("_id")}

    def validate(self) -> None:
        """Raise ValueError for a layout a model could not be trained with."""
        if self.image_token_offset <= 0 or self.image_codebook_size <= 0:
            raise ValueError("the image offset and the codebook size must be positive")
        end = self.image_token_offset + self.image_codebook_size
        if end > self.vocab_size:
            raise ValueError(f"image codes [{self.image_token_offset}, {end}) do not fit a vocabulary of "
                             f"{self.vocab_size} (the embedding's rows)")
        for name, value in self.special_ids().items():
            if not 0 <= value < self.image_token_offset:
                raise ValueError(f"{name}={value} is outside the text vocabulary [0, {self.image_token_offset})")
        # Structural ids must be distinct (eos doubles as pad in the -M layout).
        structural = ("mask_id", "bos_id", "eos_id", "soi_id", "eoi_id", "interleave_id")
        values = [getattr(self, n) for n in structural]
        if len(set(values)) != len(values):
            raise ValueError(f"structural token ids must be distinct: { {n: getattr(self, n) for n in structural} }")
        if self.pad_id in {self.mask_id, self.bos_id, self.soi_id, self.eoi_id}:
            raise ValueError(f"pad_id {self.pad_id} collides with a structural id other than eos")
        if self.t2i_id in values:
            raise ValueError(f"t2i_id={self.t2i_id} collides with a structural token id")

    def image_token(self, code):
        """MAGVIT code(s) -> vocabulary id(s); works on ints, numpy arrays and torch tensors."""
        return code + self.image_token_offset

    def image_code(self, token):
        return token - self.image_token_offset

    def is_image_token(self, token):
        return (token >= self.image_token_offset) & (token < self.image_token_offset + self.image_codebook_size)


MMADA_M = TokenLayout()
"""The published MMaDA-8B / MMaDA-Parallel-M layout (LLaDA tokenizer of 126349 entries)."""
