"""The one length contract between tokenize, the trainers and the sampler.

A sequence has two text parts of fixed length, each `bos + text + eos`, eos-padded: the
instruction (length L_in) and the reasoning (L_out). Tokenize keeps text of at most L - 2 tokens
(or cuts it there), SFT checks a version's longest rows against the same numbers before its first
step, and the sampler writes a reasoning part of L_out. The preset names the sequence layout
(`trainer/sequence.py`); it is recorded with every tokenized version and every run.
"""

from __future__ import annotations

import dataclasses

PRESETS = ("mmada-parallel-m", "paraforge")


@dataclasses.dataclass(kw_only=True)
class SequenceConfig:
    # mmada-parallel-m: what the published -M checkpoint was trained on (one text length L for both
    # parts, generation written as an edit of a black image, independent CFG dropout).
    # paraforge: generation without an input image block (<|t2i|>), joint CFG dropout.
    preset: str = "mmada-parallel-m"
    instruction_len: int = 256  # L_in: bos + instruction + eos, eos-padded
    reasoning_len: int = 256  # L_out: bos + reasoning + eos, eos-padded

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown sequence preset {self.preset!r}; known: {', '.join(PRESETS)}")
        if min(self.instruction_len, self.reasoning_len) < 3:
            raise ValueError("a text part needs at least 3 positions (bos, one token, eos)")
        if self.preset == "mmada-parallel-m" and self.instruction_len != self.reasoning_len:
            raise ValueError(f"the mmada-parallel-m preset has one text length L for both parts, not "
                             f"instruction_len={self.instruction_len} and reasoning_len={self.reasoning_len} "
                             "(set both, or sequence.preset=paraforge)")

    @property
    def max_instruction_tokens(self) -> int:
        return self.instruction_len - 2

    @property
    def max_reasoning_tokens(self) -> int:
        return self.reasoning_len - 2
