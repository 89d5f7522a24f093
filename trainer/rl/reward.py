"""ParaRL's reward: CLIP alignment between the text and the image as they stand at a denoising step
(or, in the shapes world, the exact verifier's text-image consistency: `reward=verifier`; or the
user's own function: `reward=MODULE:FUNCTION`).

The image at step t is the committed codes with every still-masked position filled by the model's
prediction at that step (the sampler records it): a half-masked image cannot be decoded, and the
prediction is what the model "sees" it becoming. The text is the committed tokens up to the first
eos, masked positions left out. Both are decoded (MAGVIT-v2, the text tokenizer) and scored by CLIP
through open_clip: cosine similarity of the normalised embeddings.

Normalisation (paper): the mean and std of CLIP scores on ~1% of the training data (reference
reasoning vs output image); a score becomes clip((s - mean) / std, -c, c), rescaled to [0, 1]. The
verifier's scores (and a reward function's) are already in [0, 1], and the verifier's reference pairs
all score 1, so they take `RewardStats.identity`, under which normalising changes nothing.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from annotators.world.verifier import consistency
from pipeline.hub import load_text_tokenizer
from pipeline.image_tokenizer import DEFAULT_ID, MagvitV2

REWARDS = ("clip", "verifier")  # or MODULE:FUNCTION, a reward function of the user's (FunctionScorer)


@dataclasses.dataclass(kw_only=True)
class ClipConfig:
    # an open_clip name + pretrained tag (ViT-H-14 / laion2b_s32b_b79k), + a local weights file, or
    # an open_clip folder as `local-dir:/path` (open_clip_config.json + weights; pretrained unused)
    model: str = "ViT-H-14"
    pretrained: str | None = "laion2b_s32b_b79k"
    device: str = "cpu"  # trainer rl puts it on each rank's device
    # CLIP reads 77 tokens: `truncate` scores the text's first 75 BPE tokens (open_clip's default;
    # a ~250-token trace is mostly unseen, and texts committed block by block look alike at every
    # recorded step); `windows` scores each consecutive 75-token window of the text against the
    # image and averages the windows' cosines (every window weighs the same; the last may be short)
    text: str = "truncate"

    def __post_init__(self) -> None:
        if self.text not in ("truncate", "windows"):
            raise ValueError(f"clip.text must be truncate or windows, not {self.text!r}")


@dataclasses.dataclass
class RewardStats:
    mean: float
    std: float
    clip: float  # c: z-scores are clipped to [-c, c] before rescaling to [0, 1]
    samples: int
    source: str  # the dataset version they were estimated on

    def normalise(self, scores: torch.Tensor) -> torch.Tensor:
        z = ((scores - self.mean) / max(self.std, 1e-6)).clamp(-self.clip, self.clip)
        return (z + self.clip) / (2 * self.clip)

    @classmethod
    def identity(cls, clip: float, source: str) -> "RewardStats":
        """Statistics under which `normalise` is the identity on [0, 1]: (s - 1/2) * 2c, rescaled back."""
        return cls(mean=0.5, std=1 / (2 * clip), clip=clip, samples=0, source=source)

    @classmethod
    def from_scores(cls, scores: torch.Tensor, clip: float, source: str) -> "RewardStats":
        return cls(mean=float(scores.mean()), std=float(scores.std()), clip=clip, samples=len(scores), source=source)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> "RewardStats":
        return cls(**json.loads(path.read_text()))


class ClipScorer:
    def __init__(self, cfg: ClipConfig):
        import open_clip  # optional and heavy: only where a CLIP reward is made

        pretrained = None if cfg.model.startswith(("local-dir:", "hf-hub:")) else cfg.pretrained
        self.model, _, _ = open_clip.create_model_and_transforms(cfg.model, pretrained=pretrained, device=cfg.device)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(cfg.model)
        visual = self.model.visual
        size = visual.image_size
        self.size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        preprocess = getattr(visual, "preprocess_cfg", {}) or {}
        self.mean = torch.tensor(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN)).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocess.get("std", open_clip.OPENAI_DATASET_STD)).view(1, 3, 1, 1)
        self.device, self.text_mode = cfg.device, cfg.text
        if self.text_mode == "windows" and not hasattr(self.tokenizer, "encode"):
            raise ValueError(f"clip.text=windows needs open_clip's BPE tokenizer; {cfg.model} has another")

    @torch.no_grad()
    def score(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """[B, 3, H, W] images in [0, 1] and B texts -> [B] cosine similarities (with text windows:
        each text's windows' cosines with its image, averaged)."""
        pixels = F.interpolate(images.float(), size=self.size, mode="bicubic", align_corners=False, antialias=True)
        pixels = ((pixels.clamp(0, 1) - self.mean) / self.std).to(self.device)
        image = F.normalize(self.model.encode_image(pixels).float(), dim=-1)
        if self.text_mode == "truncate":
            text = F.normalize(self.model.encode_text(self.tokenizer(texts).to(self.device)).float(), dim=-1)
            return (image * text).sum(-1).cpu()
        windows = [self.windows(t) for t in texts]
        text = F.normalize(self.model.encode_text(torch.cat(windows).to(self.device)).float(), dim=-1)
        owner = torch.repeat_interleave(torch.arange(len(texts)), torch.tensor([len(w) for w in windows]))
        cosines = (image[owner.to(image.device)] * text).sum(-1).cpu()
        return torch.zeros(len(texts)).index_add_(0, owner, cosines) / torch.bincount(owner, minlength=len(texts))

    def windows(self, text: str) -> torch.Tensor:
        """[k, 77] CLIP token rows: the text's BPE tokens in consecutive windows of 75, each
        between start and end tokens (an empty text: one empty window)."""
        context = self.tokenizer.context_length
        ids = self.tokenizer.encode(text)
        width = context - 2
        chunks = [ids[i:i + width] for i in range(0, len(ids), width)] or [[]]
        rows = torch.zeros(len(chunks), context, dtype=torch.long)
        for row, chunk in zip(rows, chunks):
            tokens = [self.tokenizer.sot_token_id, *chunk, self.tokenizer.eot_token_id]
            row[:len(tokens)] = torch.tensor(tokens)
        return rows


def check_reward(kind: str) -> None:
    """A ValueError unless `kind` names a reward: one of REWARDS, or MODULE:FUNCTION."""
    module, _, name = kind.partition(":")
    if kind not in REWARDS and not (module and name.isidentifier()):
        raise ValueError(f"reward must be one of {REWARDS} or MODULE:FUNCTION, not {kind!r}")


def reward_function(kind: str):
    """`verifier`: the shapes world's exact text-image consistency (annotators/world: the fraction of
    the scene, 9 cells and the background, on which the text's scene and the image's agree; free and
    exact, so a reward and its measurement can be told apart from CLIP's). MODULE:FUNCTION: the
    user's function, imported on each rank, as TRL and verl take reward functions."""
    if kind == "verifier":
        return consistency
    module, _, name = kind.partition(":")
    try:
        function = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"reward {kind!r}: cannot import {name} from {module}: {e}") from e
    if not callable(function):
        raise ValueError(f"reward {kind!r} is not a function")
    return function


class FunctionScorer:
    """A reward function of (image: an [H, W, 3] uint8 array, text) -> a score in [0, 1], used as
    it is (the run's statistics are the identity). A score outside [0, 1] stops the run: normalised
    by the identity it would silently outweigh every other rollout's."""

    def __init__(self, kind: str):
        self.kind, self.function = kind, reward_function(kind)

    @torch.no_grad()
    def score(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        arrays = (images.float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
        scores = torch.tensor([float(self.function(a, t)) for a, t in zip(arrays, texts, strict=True)])
        bad = scores[~((scores >= 0) & (scores <= 1))]
        if len(bad):
            raise ValueError(f"reward {self.kind!r} returned {bad[0].item()}: a score must be within [0, 1]")
        return scores


class RewardModel:
    """Codes + text ids -> scores: MAGVIT-v2 decoding, text detokenizing, then CLIP (or a reward
    function: the verifier's, or the user's)."""

    def __init__(self, clip: ClipConfig, image_tokenizer: str = DEFAULT_ID, text_tokenizer: str | None = None,
                 device: str | torch.device | None = None, kind: str = "clip"):
        check_reward(kind)
        device = str(device or clip.device)
        self.magvit = MagvitV2.from_pretrained(image_tokenizer, device=device)
        self.text = load_text_tokenizer(text_tokenizer)
        self.scorer = ClipScorer(dataclasses.replace(clip, device=device)) if kind == "clip" else FunctionScorer(kind)
        self.device, self.kind = device, kind

    def score(self, codes: torch.Tensor, text_ids: list[list[int]], batch_size: int = 8) -> torch.Tensor:
        """[n, h*w] raw codes (square grid) and n token-id lists -> [n] raw CLIP scores. On a GPU the
        decoder and CLIP run in bfloat16 (the cosine is taken in float32)."""
        grid = math.isqrt(codes.shape[1])
        scores = []
        on_gpu = self.device.startswith("cuda")
        with torch.autocast("cuda" if on_gpu else "cpu", dtype=torch.bfloat16, enabled=on_gpu):
            for i in range(0, len(text_ids), batch_size):
                images = self.magvit.decode(codes[i:i + batch_size].to(self.device), (grid, grid))
                texts = [self.text.decode(ids) for ids in text_ids[i:i + batch_size]]
                scores.append(self.scorer.score(images, texts))
        return torch.cat(scores)


def reference_sample(table, fraction: float, min_rows: int, seed: int) -> tuple[torch.Tensor, list[list[int]]]:
    """A seeded sample of a tokenized table, `fraction` of its rows and at least `min_rows` (or all):
    (output image codes [n, h*w], reference reasoning ids), the pairs the statistics are taken on."""
    n = min(table.num_rows, max(min_rows, math.ceil(fraction * table.num_rows)))
    if n < 2:
        raise ValueError(f"{table.num_rows} row(s): too few to estimate reward statistics")
    picked = np.random.default_rng(seed).choice(table.num_rows, size=n, replace=False)
    rows = table.select(["output_image_codes", "reasoning_ids"]).take(sorted(picked.tolist())).to_pylist()
    return torch.tensor([r["output_image_codes"] for r in rows]), [r["reasoning_ids"] for r in rows]
