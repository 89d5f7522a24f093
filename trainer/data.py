"""A tokenized version's rows for training: one deterministic, rank-sharded, resumable row source,
and the loader of SFT batches on it.

The shards are memory-mapped; an epoch is a seeded permutation of all rows; rank r of W takes
every W-th index of it (the tail that does not divide evenly is dropped, so every rank runs the
same number of steps). The state is (epoch, position): saved in every checkpoint, it resumes
mid-epoch exactly, with the same rows in the same order. SFT's `ShardLoader` and ParaRL's prompts
(one global order, W = 1) read through the same `RowSource`.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import torch.distributed as dist

from pipeline.registry import DatasetRegistry
from schemas import TEXT_FACTS, text_facts
from trainer.sequence import SequenceBuilder

COLUMNS = ["task", "instruction_ids", "reasoning_ids", "input_image_codes", "output_image_codes"]


@dataclasses.dataclass
class LoaderState:
    epoch: int = 0
    position: int = 0  # rows this rank has taken from the current epoch


class RowSource:
    """The `columns` of a tokenized version (its first `limit` rows, if given) in a seeded order per
    epoch, rank `rank` of `world_size` taking its every-W-th share; `next(n)` continues into the next
    epoch when this one runs out."""

    def __init__(self, ref: str, registry: str | None, columns: list[str], seed: int = 0, rank: int = 0,
                 world_size: int = 1, limit: int | None = None):
        self.registry = DatasetRegistry(registry)
        self.manifest = self.registry.resolve(ref, schema="tokenized/1")
        paths = local_verified_copies(self.registry, self.manifest)
        self.table = pa.concat_tables([ipc.open_file(pa.memory_map(p)).read_all().select(columns) for p in paths])
        if limit is not None:
            self.table = self.table.slice(0, limit)
        self.per_rank = self.table.num_rows // world_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.state = LoaderState()

    @functools.lru_cache(maxsize=2)  # noqa: B019 (one source per run: it lives as long as the cache)
    def order(self, epoch: int) -> np.ndarray:
        """This rank's row indices in `epoch`."""
        order = np.random.default_rng([self.seed, epoch]).permutation(self.table.num_rows)
        return order[self.rank::self.world_size][: self.per_rank]

    def next(self, n: int) -> pa.Table:
        indices: list[int] = []
        while len(indices) < n:
            if self.state.position == self.per_rank:
                self.next_epoch()
            take = min(n - len(indices), self.per_rank - self.state.position)
            indices.extend(self.order(self.state.epoch)[self.state.position: self.state.position + take])
            self.state.position += take
        return self.table.take(pa.array(indices, pa.int64()))

    def next_epoch(self) -> None:
        self.state = LoaderState(self.state.epoch + 1, 0)

    def state_dict(self) -> dict:
        return {**dataclasses.asdict(self.state), "seed": self.seed, "world_size": self.world_size,
                "dataset": self.manifest.ref}

    def load_state_dict(self, state: dict) -> None:
        # seed and world size: absent from ParaRL's prompt cursors of before they were one source
        seed, world_size = state.get("seed", self.seed), state.get("world_size", self.world_size)
        if state["dataset"] != self.manifest.ref or seed != self.seed:
            raise ValueError(f"checkpoint was made on {state['dataset']} seed {seed}, "
                             f"not {self.manifest.ref} seed {self.seed}")
        if world_size != self.world_size:
            raise ValueError("resuming with another world size changes every rank's order; "
                             f"checkpoint has {world_size}, this run {self.world_size}")
        self.state = LoaderState(state["epoch"], state["position"])


class ShardLoader:
    """SFT's micro-batches: rank r's rows, `batch_size` at a time; a batch never spans two epochs."""

    def __init__(self, ref: str, registry: str | None, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, builder: SequenceBuilder | None = None):
        self.rows = RowSource(ref, registry, COLUMNS, seed, rank, world_size)
        self.manifest, self.batch_size = self.rows.manifest, batch_size
        if self.rows.per_rank < batch_size:
            raise ValueError(f"{self.manifest.ref} has {self.rows.table.num_rows} rows: too few for {world_size} "
                             f"rank(s) x batch {batch_size}")
        if builder is not None:
            check_compatible(self.manifest, builder, self.rows.registry)
            check_ranges(self.rows.table, builder, self.manifest.ref)

    def next_rows(self) -> list[dict]:
        """The next batch of rows (python dicts); rolls over into the next epoch."""
        if self.rows.state.position + self.batch_size > self.rows.per_rank:
            self.rows.next_epoch()
        return self.rows.next(self.batch_size).to_pylist()

    def state_dict(self) -> dict:
        return self.rows.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.rows.load_state_dict(state)


def local_verified_copies(reg: DatasetRegistry, manifest) -> list[str]:
    """Local paths of the version's shards, every byte hashed against the manifest once per node
    before training on it: the node leader (LOCAL_RANK 0) fetches and hashes, the other ranks wait
    and use its copies (eight ranks hashing the same files would read the dataset eight times).
    A corrupt shard stops every rank with the same error, naming it."""
    problem = ""
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        try:
            reg.local_shard_paths(manifest, verify=True)
        except ValueError as e:
            problem = str(e)
    if dist.is_available() and dist.is_initialized():
        verdicts: list[str] = [""] * dist.get_world_size()
        dist.all_gather_object(verdicts, problem)  # also the barrier: the leader's copies are in place
        problem = next((v for v in verdicts if v), "")
    if problem:
        raise ValueError(problem)
    return reg.local_shard_paths(manifest)


def check_compatible(manifest, builder: SequenceBuilder, registry: DatasetRegistry) -> None:
    """Refuse, before the first step, a version whose ids the model would misread or whose rows
    the sequences cannot hold: a ValueError that says which and what to change."""
    layout, sequence = builder.layout, builder.config
    made = manifest.lineage.get("tokenize", {})
    size = made.get("text_tokenizer_size")
    if size is not None and size != layout.image_token_offset:
        raise ValueError(f"{manifest.ref} was tokenized with a text tokenizer of {size} entries, but the model's "
                         f"layout puts image codes at {layout.image_token_offset} (= len of its tokenizer): "
                         "tokenize with the model's tokenizer")
    codebook = made.get("image_codebook_size")
    if codebook is not None and codebook != layout.image_codebook_size:
        raise ValueError(f"{manifest.ref} has {codebook}-code images; the model's layout has {layout.image_codebook_size}")
    facts = manifest.stats
    if not all(k in facts for k in TEXT_FACTS):  # a version from before tokenize recorded them: scan it
        facts = text_facts(registry.read_table(manifest, ["task", "instruction_ids", "reasoning_ids",
                                                          "instruction_len", "reasoning_len"]))
    top = facts["max_text_id"]
    if top is not None and top >= layout.image_token_offset:
        raise ValueError(f"{manifest.ref} holds text id {top}, an image token of the model's layout (offset "
                         f"{layout.image_token_offset}): the text tokenizer does not match the model")
    for part, limit in (("instruction", sequence.max_instruction_tokens), ("reasoning", sequence.max_reasoning_tokens)):
        longest = facts[f"max_{part}_len"] or 0
        if longest > limit:
            raise ValueError(f"{manifest.ref} has a {part} of {longest} tokens; sequence.{part}_len {limit + 2} "
                             f"holds {limit} (bos + text + eos): raise it or tokenize again with the same sequence settings")
    if builder.published and builder.blank_image_codes is None and facts["tasks"].get("generate"):
        raise ValueError(f"{manifest.ref} has generation rows but records no blank image codes, which the "
                         "mmada-parallel-m preset needs: tokenize it again with this paraforge")


def check_ranges(table: pa.Table, builder: SequenceBuilder, ref: str) -> None:
    """The ids themselves, not what the manifest says of them: every image code inside the codebook
    and every text id below the image offset, or a ValueError now instead of an index error deep
    inside the first forward."""
    layout = builder.layout
    for column, limit in (("input_image_codes", layout.image_codebook_size),
                          ("output_image_codes", layout.image_codebook_size),
                          ("instruction_ids", layout.image_token_offset), ("reasoning_ids", layout.image_token_offset)):
        values = pc.list_flatten(table[column])
        if len(values) == 0:
            continue
        low, high = pc.min_max(values).values()
        if low.as_py() < 0 or high.as_py() >= limit:
            raise ValueError(f"{ref}: {column} holds ids in [{low.as_py()}, {high.as_py()}], outside [0, {limit}): "
                             "the version is corrupt or was made for another model")
