"""`pipeline tokenize`: an annotated version -> a `tokenized` version of Arrow IPC shards.

Images become MAGVIT-v2 codes (raw codebook indices, 0..8191), text becomes tokenizer ids with no
special tokens; the trainer adds task tokens, bos/eos and image offsets from its TokenLayout, so
shards do not depend on one model's vocabulary. The stage runs in a Ray Data actor pool (one
MAGVIT per actor, on a GPU when the cluster has them) as a resumable chunked job.

Text limits come from the sequence contract (`schemas.SequenceConfig`, the same object `trainer sft`
takes): at most L - 2 tokens per text part. Over-long text is quarantined by default
(`overflow=quarantine`): a trace cut at a token limit teaches the model to stop mid-thought, and a
cut instruction asks for another edit than the image shows. `overflow=truncate` keeps such rows,
cut to the limit (what the published training did), when losing rows costs more.

The manifest records what a trainer needs to read the version: the text tokenizer's size (a
model's image offset must equal it), the codebook size, the sequence settings, and the codes of a
black image at the tokenize resolution (the mmada-parallel-m preset writes a generation as an edit
of that black image).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.chunked import iter_results, plan_chunks, run_missing
from pipeline.image_tokenizer import DEFAULT_ID, MagvitV2
from pipeline.image_tokenizer.magvit import resolve_checkpoint, sha256_file, weights_file
from pipeline.lineage import lineage
from pipeline.ray_runtime import init_ray
from pipeline.registry import DatasetRegistry, split_ref
from schemas import Counts, SequenceConfig, VersionManifest, tokenized_schema

STAGE = "tokenize"
_INPUT_COLUMNS = ["sample_id", "task", "instruction", "reasoning", "input_image", "output_image"]
DEFAULT_TEXT_TOKENIZER = "GSAI-ML/LLaDA-8B-Instruct"


@dataclasses.dataclass(kw_only=True)
class TokenizeConfig:
    dataset: str  # NAME[@VERSION|@TAG] of an annotated version
    output: str | None = None
    image_tokenizer: str = DEFAULT_ID
    text_tokenizer: str = DEFAULT_TEXT_TOKENIZER
    resolution: int = 512  # squash-resized to R x R: (R/16)^2 codes per image
    batch_size: int = 8  # samples per MAGVIT forward (inputs and outputs go in one batch)
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "float32"  # float32 | bfloat16
    sequence: SequenceConfig = dataclasses.field(default_factory=SequenceConfig)  # text limits: L - 2 per part
    overflow: str = "quarantine"  # quarantine | truncate
    concurrency: int = 1  # MAGVIT actors (one per GPU)
    cpus_per_actor: int = 1  # CPU threads of each actor's MAGVIT when it runs on the CPU
    chunk_rows: int = 256
    registry: str | None = None
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if self.resolution % 16:
            raise ValueError(f"resolution {self.resolution} is not a multiple of 16")
        if self.overflow not in ("quarantine", "truncate"):
            raise ValueError(f"overflow must be quarantine or truncate, not {self.overflow!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, not {self.dtype!r}")


def encode_blank_image(magvit: MagvitV2, resolution: int) -> list[int]:
    """The codes of a black image at `resolution` (what the published -M training feeds as the
    input image of a generation)."""
    from PIL import Image

    pixels = MagvitV2.preprocess([Image.new("RGB", (resolution, resolution))], resolution)
    param = next(magvit.parameters())
    return magvit.encode(pixels.to(param.device, param.dtype))[0].tolist()


TEXT_FACTS = ("max_text_id", "max_instruction_len", "max_reasoning_len", "tasks")


def text_facts(table: pa.Table) -> dict:
    """What a trainer checks a version against before its first step, from tokenized rows: the
    largest text id, the longest texts, rows per task. Tokenize records them, so a trainer at 1M
    rows need not scan every id on every rank."""
    ids = [pc.max(pc.list_flatten(table[c])).as_py() for c in ("instruction_ids", "reasoning_ids")]
    return {"max_text_id": max((i for i in ids if i is not None), default=None),
            "max_instruction_len": pc.max(table["instruction_len"]).as_py(),
            "max_reasoning_len": pc.max(table["reasoning_len"]).as_py(),
            "tasks": {r["values"]: r["counts"] for r in pc.value_counts(table["task"]).to_pylist()}}


def merge_facts(a: dict, b: dict) -> dict:
    out = {k: max((v for v in (a.get(k), b[k]) if v is not None), default=None) for k in TEXT_FACTS[:3]}
    tasks = dict(a.get("tasks", {}))
    for task, n in b["tasks"].items():
        tasks[task] = tasks.get(task, 0) + n
    return {**out, "tasks": dict(sorted(tasks.items()))}


def load_text_tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what decides the ids: the vocabulary and the special tokens."""
    spec = {"vocab": sorted(tokenizer.get_vocab().items()), "special": tokenizer.all_special_tokens}
    return hashlib.sha256(json.dumps(spec).encode()).hexdigest()


class TokenizeStage:
    """Ray Data actor: loads MAGVIT-v2 and the text tokenizer once, tokenizes batches."""

    def __init__(self, config: TokenizeConfig):
        import torch

        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cpu":  # Ray pins workers to 1 thread; use the CPUs the actor holds
            torch.set_num_threads(config.cpus_per_actor)
        self.dtype = getattr(torch, config.dtype)
        self.magvit = MagvitV2.from_pretrained(config.image_tokenizer, device=self.device, dtype=self.dtype)
        self.text = load_text_tokenizer(config.text_tokenizer)
        self.config = config

    def _codes(self, images: list[bytes]) -> list[list[int]]:
        from PIL import Image

        pixels = MagvitV2.preprocess([Image.open(io.BytesIO(b)) for b in images], self.config.resolution)
        return self.magvit.encode(pixels.to(self.device, self.dtype)).to("cpu", copy=False).int().tolist()

    def _ids(self, texts: list[str], limit: int) -> tuple[list[list[int]], list[bool]]:
        ids = self.text(texts, add_special_tokens=False)["input_ids"]
        over = [len(x) > limit for x in ids]
        if self.config.overflow == "truncate":
            ids = [x[:limit] for x in ids]
        return ids, over

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        images = [r["input_image"] for r in rows if r["input_image"] is not None] + [r["output_image"] for r in rows]
        codes = iter(self._codes(images))
        input_codes = [next(codes) if r["input_image"] is not None else None for r in rows]
        output_codes = [next(codes) for _ in rows]
        sequence = self.config.sequence
        instruction_ids, long_instruction = self._ids([r["instruction"] for r in rows], sequence.max_instruction_tokens)
        reasoning_ids, long_reasoning = self._ids([r["reasoning"] for r in rows], sequence.max_reasoning_tokens)
        grid = self.config.resolution // 16
        out = []
        for i, r in enumerate(rows):
            reason = message = None
            if self.config.overflow == "quarantine" and (long_instruction[i] or long_reasoning[i]):
                which = "instruction" if long_instruction[i] else "reasoning"
                limit = getattr(sequence, f"max_{which}_tokens")
                reason = f"{which}_too_long"
                message = f"{which} has {len(instruction_ids[i] if which == 'instruction' else reasoning_ids[i])} tokens > {limit}"
            out.append({"chunk": r["chunk"], "sample_id": r["sample_id"], "task": r["task"],
                        "instruction_ids": instruction_ids[i], "reasoning_ids": reasoning_ids[i],
                        "input_image_codes": input_codes[i], "output_image_codes": output_codes[i],
                        "grid_h": grid, "grid_w": grid, "instruction_len": len(instruction_ids[i]),
                        "reasoning_len": len(reasoning_ids[i]), "reason": reason, "message": message})
        schema = tokenized_schema(grid * grid)
        return pa.Table.from_pylist(out, schema=pa.schema([pa.field("chunk", pa.int64())] + list(schema) + [
            pa.field("reason", pa.string()), pa.field("message", pa.string())]))


def _apply_stage(config: TokenizeConfig) -> Callable:
    def apply(ds):
        import ray
        import ray.data

        gpus = ray.cluster_resources().get("GPU", 0) > 0 and config.device != "cpu"
        return ds.map_batches(TokenizeStage, batch_size=config.batch_size, batch_format="pyarrow",
                              fn_constructor_kwargs={"config": config},
                              compute=ray.data.ActorPoolStrategy(size=config.concurrency),
                              num_gpus=1 if gpus else 0, num_cpus=config.cpus_per_actor)
    return apply


def run_tokenize(config: TokenizeConfig, progress: bool = True) -> VersionManifest:
    registry = DatasetRegistry(config.registry)
    source = registry.resolve(config.dataset, schema="annotated/1")
    output = config.output or split_ref(config.dataset)[0]
    checkpoint = weights_file(resolve_checkpoint(config.image_tokenizer))
    text = load_text_tokenizer(config.text_tokenizer)
    # One small MAGVIT forward on the driver: the black image every generation row stands on.
    magvit = MagvitV2.from_pretrained(config.image_tokenizer)
    sequence = config.sequence
    provenance = {"image_tokenizer": config.image_tokenizer, "image_tokenizer_sha256": sha256_file(checkpoint),
                  "resolution": config.resolution, "image_codebook_size": magvit.config.codebook_size,
                  "text_tokenizer": config.text_tokenizer, "text_tokenizer_sha256": tokenizer_fingerprint(text),
                  "text_tokenizer_size": len(text), "sequence": dataclasses.asdict(sequence),
                  "max_instruction_tokens": sequence.max_instruction_tokens,
                  "max_reasoning_tokens": sequence.max_reasoning_tokens, "overflow": config.overflow,
                  "blank_image_codes": encode_blank_image(magvit, config.resolution)}
    del magvit
    key = "tokenize-" + hashlib.sha256(json.dumps(
        {"input": source.ref, "chunk_rows": config.chunk_rows, "dtype": config.dtype, **provenance},
        sort_keys=True).encode()).hexdigest()[:16]
    work = registry.work_dir(output, key)
    chunks = plan_chunks(source, config.chunk_rows)
    init_ray(config.ray_address)
    resumed, seconds = run_missing(registry, source, chunks, work, _INPUT_COLUMNS, _apply_stage(config),
                                   progress=progress, unit="sample")

    grid = config.resolution // 16
    schema = tokenized_schema(grid * grid)
    reasons: dict[str, int] = {}
    n_out = n_images = 0
    facts: dict = {}
    with registry.writer(output, STAGE, schema, parent=source.ref) as writer:
        for rows, results in iter_results(registry, source, chunks, work):
            rejected = pc.is_valid(results["reason"])
            kept = results.filter(pc.invert(rejected))
            writer.write(kept.select(schema.names))
            facts = merge_facts(facts, text_facts(kept))
            bad, bad_rows = results.filter(rejected), rows.filter(rejected)
            for r in bad["reason"].to_pylist():
                reasons[r] = reasons.get(r, 0) + 1
            writer.quarantine(reason=bad["reason"], message=bad["message"], source=bad_rows["source"],
                              source_ref=bad_rows["source_ref"], sample_id=bad["sample_id"])
            n_out += results.num_rows - bad.num_rows
            n_images += results.num_rows + pc.sum(pc.is_valid(results["input_image_codes"])).as_py()
        counts = Counts(input=source.counts.output, output=n_out, quarantined=sum(reasons.values()), duplicates=0)
        stats = {"quarantine_reasons": dict(sorted(reasons.items())), "images": n_images,
                 "seconds": round(seconds, 3), "resumed_chunks": resumed,
                 "images_per_s": round(n_images / seconds, 2) if seconds else None, **facts}
        return writer.publish(counts, lineage(dataclasses.asdict(config), tokenize=provenance), stats)


def report(manifest: VersionManifest) -> str:
    s = manifest.stats
    lines = [manifest.counts.line().replace("output", "tokenized"),
             f"images {s['images']}  images/s {s['images_per_s']}  (this run: {s['seconds']} s, "
             f"{s['resumed_chunks']} chunk(s) resumed)"]
    lines += [f"  quarantined {reason}: {n}" for reason, n in s["quarantine_reasons"].items()]
    return "\n".join(lines)
