"""The small models of the shapes world, trained here on a CPU in minutes.

The shapes world (pipeline.demo_data) renders a 3x3 grid of 16 px cells at 48 px, so a x16
MAGVIT-v2 gives exactly one code per cell. Three models are built here, each in the published
format the mission's code already loads, and kept apart from the mission's training path:

- a word-level text tokenizer whose vocabulary is the world's words (plus plain English for traces),
  with LLaDA's and MMaDA's special tokens;
- a small MAGVIT-v2 trained as an autoencoder on world scenes;
- a small open_clip CLIP trained contrastively on (description, image) pairs.

    python -m jobs.world_models --out DIR   # -> DIR/{tokenizer,magvit,clip}
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import shutil
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from annotators.world.scene import BACKGROUNDS, CELLS, COLOURS, SHAPES, Scene, random_edit, random_scene
from annotators.world.verifier import read_scene
from jobs.tiny_models import LLADA_SPECIAL_TOKENS, MMADA_TOKENS
from pipeline.image_tokenizer import MagvitV2, MagvitV2Config

# ---------------------------------------------------------------------------------------------
# 1. The world's text tokenizer
# ---------------------------------------------------------------------------------------------

UNK = "[UNK]"
PUNCTUATION = list(".,;:!?'\"()[]{}-_/\\&%*+=<>#@$^`|~")
# What instructions and descriptions say, beyond colours, backgrounds, cells and kinds.
WORLD_WORDS = """
change colour color of to move add remove make larger smaller large small draw this scene a an the
in on and background shape shapes edit recolour resize
"""
# Plain English that reasoning traces use ("The instruction asks to move the red circle from the top
# left to the centre. ... I will draw ...").
TRACE_WORDS = """
i me my we us our you your he she they them their it its itself this that these those there here
the a an and or but nor not no yes so then than as if when while where which who whom whose what why
how because since until after before during about above below across along around at behind beside
besides between beyond by down for from in inside into near next of off on onto out outside over
through to toward towards under up upon with within without against among
is are was were be been being am do does did done doing have has had having can could will would
shall should may might must need needs needed ought let lets
keep keeps kept keeping stay stays stayed staying remain remains remained remaining leave leaves left
asks ask asked asking instruction instructions request requests requested edit edits edited editing
picture pictures image images hold holds held holding show shows showed shown showing result results
resulting draw draws drew drawn drawing place places placed placing put puts putting set sets setting
scene scenes background backgrounds shape shapes object objects item items thing things change changes
changed changing colour colours coloured color colors colored move moves moved moving add adds added
adding remove removes removed removing make makes made making turn turns turned turning become becomes
became becoming grow grows grew grown growing shrink shrinks shrank shrunk shrinking delete deletes
deleted deleting take takes took taken taking away replace replaces replaced replacing swap recolour
recolours recoloured recolouring recolor recolored resize resizes resized resizing enlarge enlarged
reduce reduced increase increased decrease decreased erase erased paint painted fill filled appear
appears appeared disappear disappears gone go goes went get gets got give gives gave see sees saw seen
look looks looked find finds found notice check checks checked compare match matches matched
unchanged untouched unaffected everything anything something nothing else other others another rest
same different new old original current currently now still already again also too only just even
exactly precisely carefully simply all both each every either neither any some none many few more
most less least much several single one two three four five six seven eight nine ten zero once twice
first second third fourth fifth last final finally next previous before after then later early
plan plans planned planning goal goals task tasks step steps target targets aim aims intend intended
want wants wanted think thinks thought know knows decide decides decided determine determines
identify identifies locate locates describe describes described description mention mentioned name
named called say says said read reads write writes written note notes noted means meaning clear
clearly visible hidden empty full free occupied open available whole entire overall part
large larger largest small smaller smallest big bigger biggest little tiny size sizes sized
left right top bottom centre center middle corner corners upper lower side sides edge edges row rows
column columns cell cells grid position positions positioned location locations spot spots area
region square squares circle circles triangle triangles round
red green blue yellow purple orange black white grey gray beige pale light dark bright
colourful plain solid flat
space spaces canvas frame layout arrangement composition
correct correctly wrong right exact accurate accurately consistent consistency
should must will would can keep so that with be by as one two three four
it's its it is that's there's what's let's i'm i'll
input output before after source original edited version world hello yes okay ok
"""
# Fragments the pre-tokenizer makes of contractions ("doesn't" -> doesn ' t).
CONTRACTION_PARTS = "s t ll re ve d m don doesn isn aren wasn weren won can couldn shouldn wouldn didn hasn haven"


def world_vocabulary() -> list[str]:
    """Every word of the world's texts and traces, lower-case and capitalised; numbers 0-100; punctuation."""
    words: set[str] = set()
    for phrase in [*COLOURS, *BACKGROUNDS, *CELLS.values(), *SHAPES]:
        words.update(phrase.split())
    for text in (WORLD_WORDS, TRACE_WORDS, CONTRACTION_PARTS):
        for word in text.split():
            words.update(part for part in word.replace("'", " ").split())
    words.update(w.capitalize() for w in list(words))
    words.add("I")
    return sorted(words) + [str(n) for n in range(101)] + PUNCTUATION


def build_world_tokenizer(out: str | Path) -> Path:
    """A word-level tokenizer over `world_vocabulary()` (unknown words -> [UNK]) carrying LLaDA's and
    MMaDA's special tokens as `build_tiny_llada_tokenizer` does; load it with
    `pipeline.hub.load_text_tokenizer(out)`. Decoding joins words with spaces and closes them up
    before punctuation."""
    vocab = {token: i for i, token in enumerate([UNK, *world_vocabulary()])}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    word_level.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated"),
        pre_tokenizers.Digits(individual_digits=False)])
    word_level.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    word_level.add_special_tokens(LLADA_SPECIAL_TOKENS + MMADA_TOKENS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token=UNK, bos_token="<|startoftext|>",
                                        eos_token="<|endoftext|>", mask_token="<|mdm_mask|>")
    out = Path(out)
    tokenizer.save_pretrained(out)
    return out


# ---------------------------------------------------------------------------------------------
# 2. A small MAGVIT-v2: one code per 16 px cell at 48 px
# ---------------------------------------------------------------------------------------------

RESOLUTION = 48  # 3x3 cells of 16 px: one x16 code per cell
# The published LFQ and x16 downsampling (5 levels), at a fraction of the width, with 9 bits (512 codes)
# rather than 13 (8192): the 9 `cell_codes` needs. Every code is a row of the MMaDA model's embedding
# and output head, so 8192 made the world's head 9,476 rows (2/3 of an SFT step's time), of which
# the world's 147 cell contents use under 2%.
CODE_BITS = 9
WORLD_MAGVIT = MagvitV2Config(base_channels=16, encoder_channel_mult=(1, 2, 2, 4, 4), encoder_res_blocks=(1, 1, 1, 1, 1),
                              decoder_channel_mult=(1, 1, 2, 2, 4), decoder_res_blocks=(1, 1, 1, 1, 1), num_groups=8,
                              latent_channels=CODE_BITS)


def world_scenes(rng: random.Random, n: int) -> list[Scene]:
    """`n` random scenes of 1-4 shapes, every other one replaced by a random edit of it (edits
    leave shapes where random scenes rarely put them, e.g. a fourth shape beside three)."""
    scenes = []
    for i in range(n):
        scene = random_scene(rng, rng.randint(1, 4))
        scenes.append(random_edit(rng, scene)[2] if i % 2 else scene)
    return scenes


def render_batch(scenes: list[Scene], resolution: int = RESOLUTION) -> torch.Tensor:
    """Scenes -> [B, 3, R, R] in [-1, 1], MAGVIT-v2's input."""
    return MagvitV2.normalize(torch.from_numpy(np.stack([np.asarray(s.render(resolution)) for s in scenes])))


def reconstruction_table(magvit: MagvitV2, scenes: list[Scene], batch_size: int = 100) -> dict[str, float]:
    """Encode -> decode at 48 px: the mean absolute pixel error (0-255), the share of the 9 cells the
    verifier reads back exactly, and the share of scenes read back exactly (background included)."""
    errors, cells, exact = [], [], []
    for i in range(0, len(scenes), batch_size):
        batch = scenes[i:i + batch_size]
        pixels = render_batch(batch)
        decoded = magvit.decode(magvit.encode(pixels), (3, 3))
        errors.append((decoded * 255 - (pixels + 1) * 127.5).abs().mean(dim=(1, 2, 3)))
        for scene, image in zip(batch, MagvitV2.postprocess(decoded)):
            want, got = scene.items(), read_scene(image).items()  # the background, then the 9 cells
            cells.append(np.mean([a == b for a, b in zip(want[1:], got[1:])]))
            exact.append(want == got)
    return {"pixel_error": torch.cat(errors).mean().item(), "cell_accuracy": float(np.mean(cells)),
            "scene_exact": float(np.mean(exact))}


def cell_codes(scenes: list[Scene]) -> torch.Tensor:
    """The code each cell is steered to: [B, 9, 3, 3] of +-1 bits (CODE_BITS), most significant first:
    2 bits the background, 4 the shape's colour (0 for an empty cell), 2 its kind, 1 its size."""
    values = np.zeros((len(scenes), 3, 3), dtype=np.int64)
    backgrounds, colours = list(BACKGROUNDS), list(COLOURS)
    for b, scene in enumerate(scenes):
        values[b] = backgrounds.index(scene.background) << 7
        for s in scene.shapes:
            values[b][s.cell] |= (colours.index(s.colour) + 1) << 3 | SHAPES.index(s.kind) << 1 | int(s.large)
    bits = (torch.from_numpy(values)[:, None] >> torch.arange(CODE_BITS - 1, -1, -1).view(1, -1, 1, 1)) & 1
    return bits.float() * 2 - 1


def magvit_loss(magvit: MagvitV2, pixels: torch.Tensor, codes: torch.Tensor, code_weight: float = 1.0) -> torch.Tensor:
    """L1 + L2 between pixels in [-1, 1] and their reconstruction, plus a logistic loss steering each
    cell's latents to the signs of its `cell_codes`. The decoder reads the encoder's codes through the
    LFQ's straight-through sign for the second half of the batch, and the steered codes themselves
    for the first half (teacher forcing), so it learns to draw before the encoder has learnt to classify.

    A deviation from MAGVIT-v2's training (reconstruction + LFQ entropy terms, adversarial and
    perceptual losses): on CPU in minutes, an autoencoder trained on reconstruction alone collapses to
    a few codes and draws only the background (72% of cells, 0% of scenes after 600 steps)."""
    z = magvit.encoder(pixels)
    half = len(pixels) // 2
    reconstruction = magvit.decoder(torch.cat([codes[:half], magvit.quantize(z[half:])]))
    return (F.l1_loss(reconstruction, pixels) + F.mse_loss(reconstruction, pixels)
            + code_weight * F.softplus(-4 * z * codes).mean())


def reconstruction_loss(magvit: MagvitV2, pixels: torch.Tensor) -> torch.Tensor:
    """L1 + L2 between pixels in [-1, 1] and their reconstruction through the straight-through LFQ."""
    reconstruction = magvit.decoder(magvit.quantize(magvit.encoder(pixels)))
    return F.l1_loss(reconstruction, pixels) + F.mse_loss(reconstruction, pixels)


def train_magvit(out: str | Path, steps: int = 2500, seed: int = 0, batch_size: int = 16, lr: float = 1e-3,
                 config: MagvitV2Config = WORLD_MAGVIT, eval_scenes: int = 500, log_every: int = 250,
                 init: str | Path | None = None) -> Path:
    """Train a small MAGVIT-v2 on fresh world scenes at 48 px (`magvit_loss`), print steps / seconds /
    pixel error / cell and scene accuracy on `eval_scenes` held-out scenes, and save it in the
    published layout under `out`. `init`: a saved model to go on training (its config, not `config`)."""
    torch.manual_seed(seed)
    rng, held_out = random.Random(seed), world_scenes(random.Random("held-out"), eval_scenes)
    magvit = MagvitV2(config) if init is None else MagvitV2.from_pretrained(str(init)).train()
    optimizer = torch.optim.Adam(magvit.parameters(), lr=lr)
    print(f"{'steps':>6} {'seconds':>8} {'loss':>8} {'pixel err':>9} {'cells':>7} {'scenes':>7}")
    start = time.perf_counter()
    for step in range(1, steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, step / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        scenes = world_scenes(rng, batch_size)
        loss = magvit_loss(magvit, render_batch(scenes), cell_codes(scenes))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % log_every == 0 or step == steps:
            magvit.eval()
            row = reconstruction_table(magvit, held_out)
            magvit.train()
            print(f"{step:>6} {time.perf_counter() - start:>8.1f} {loss.item():>8.4f} {row['pixel_error']:>9.2f} "
                  f"{row['cell_accuracy']:>7.2%} {row['scene_exact']:>7.2%}", flush=True)
    return magvit.eval().save_pretrained(out)


# ---------------------------------------------------------------------------------------------
# 3. A small CLIP that grades how well a description fits a scene
# ---------------------------------------------------------------------------------------------

# Patches of 16 px at 48 px: one vision token per cell. open_clip's BPE text tower, as TINY_CLIP.
WORLD_CLIP = {"embed_dim": 64,
              "vision_cfg": {"image_size": RESOLUTION, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def one_attribute_variant(rng: random.Random, scene: Scene) -> Scene:
    """The scene with one shape's colour, cell, size or kind changed (a hard negative: its
    description differs from the scene's in one word or phrase)."""
    shapes = list(scene.shapes)
    i = rng.randrange(len(shapes))
    target, used = shapes[i], {(s.kind, s.colour) for s in shapes}
    free = sorted(set(CELLS) - {s.cell for s in shapes})
    change = rng.choice(["colour", "cell", "size", "kind"])
    if change == "colour":
        target = dataclasses.replace(target, colour=rng.choice([c for c in COLOURS if (target.kind, c) not in used]))
    elif change == "cell" and free:
        target = dataclasses.replace(target, cell=rng.choice(free))
    elif change == "kind" and [k for k in SHAPES if (k, target.colour) not in used]:
        target = dataclasses.replace(target, kind=rng.choice([k for k in SHAPES if (k, target.colour) not in used]))
    else:
        target = dataclasses.replace(target, large=not target.large)
    shapes[i] = target
    return Scene(scene.background, tuple(shapes))


def clip_batch(rng: random.Random, groups: int, group_size: int = 4) -> list[Scene]:
    """`groups` random scenes, each followed by `group_size - 1` one-attribute variants of it, so that
    every batch holds negatives that differ from a positive in one shape's colour, cell, size or kind."""
    scenes = []
    for _ in range(groups):
        scene = random_scene(rng, rng.randint(1, 4))
        scenes += [scene] + [one_attribute_variant(rng, scene) for _ in range(group_size - 1)]
    return scenes


class _ClipInputs:
    """Scenes -> CLIP's (pixels, tokens): rendered at the model's size, normalised as ClipScorer does."""

    def __init__(self, cfg: dict):
        self.size = cfg["vision_cfg"]["image_size"]
        self.mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])

    def __call__(self, scenes: list[Scene]) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = (render_batch(scenes, self.size) + 1) / 2
        return (pixels - self.mean) / self.std, self.tokenizer([s.describe() for s in scenes])


def clip_loss(model: open_clip.CLIP, pixels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the batch, at the model's learnable logit scale."""
    image, text, scale = model(pixels, tokens)
    logits = scale * image @ text.T
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


@torch.no_grad()
def clip_table(model: open_clip.CLIP, inputs: _ClipInputs, seed: int, n: int = 512) -> dict[str, float]:
    """On held-out scenes: image->text top-1 within batches of 32 and of 64 random scenes, and the
    mean cosine of an image with its own description and with a one-attribute variant's."""
    rng = random.Random(f"clip-held-out-{seed}")
    scenes = [random_scene(rng, rng.randint(1, 4)) for _ in range(n)]
    pixels, tokens = inputs(scenes)
    image = F.normalize(model.encode_image(pixels), dim=-1)
    text = F.normalize(model.encode_text(tokens), dim=-1)
    row = {}
    for size in (32, 64):
        hits = [(image[i:i + size] @ text[i:i + size].T).argmax(1).eq(torch.arange(size)).float()
                for i in range(0, n, size)]
        row[f"top1@{size}"] = torch.cat(hits).mean().item()
    variant = F.normalize(model.encode_text(inputs([one_attribute_variant(rng, s) for s in scenes])[1]), dim=-1)
    row["cos_matched"] = (image * text).sum(-1).mean().item()
    row["cos_one_off"] = (image * variant).sum(-1).mean().item()
    row["matched_wins"] = ((image * text).sum(-1) > (image * variant).sum(-1)).float().mean().item()
    return row


def train_clip(out: str | Path, steps: int = 1500, seed: int = 0, groups: int = 16, lr: float = 1e-3,
               cfg: dict = WORLD_CLIP, log_every: int = 250) -> Path:
    """Train a small open_clip CLIP contrastively on (description, 48 px render) pairs, batches of
    `groups` scenes with three one-attribute variants each; print held-out retrieval and cosines; save
    it as an open_clip folder (load it with `local-dir:<out>`, as trainer.rl.reward.ClipScorer does)."""
    torch.manual_seed(seed)
    rng, model, inputs = random.Random(seed), open_clip.CLIP(**cfg), _ClipInputs(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    print(f"{'steps':>6} {'seconds':>8} {'loss':>7} {'top1@32':>8} {'top1@64':>8} {'cos same':>9} {'cos 1-off':>9} "
          f"{'same wins':>9}")
    start = time.perf_counter()
    for step in range(1, steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, step / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = clip_loss(model, *inputs(clip_batch(rng, groups)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % log_every == 0 or step == steps:
            model.eval()
            row = clip_table(model, inputs, seed)
            model.train()
            print(f"{step:>6} {time.perf_counter() - start:>8.1f} {loss.item():>7.3f} {row['top1@32']:>8.2%} "
                  f"{row['top1@64']:>8.2%} {row['cos_matched']:>9.3f} {row['cos_one_off']:>9.3f} "
                  f"{row['matched_wins']:>9.2%}", flush=True)
    return save_clip(model.eval(), cfg, out)


def save_clip(model: open_clip.CLIP, cfg: dict, out: str | Path) -> Path:
    """An open_clip folder (open_clip_config.json + open_clip_model.safetensors), as `build_tiny_clip` writes."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    preprocess = {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "open_clip_model.safetensors")
    return out


# ---------------------------------------------------------------------------------------------
# 4. Build all three
# ---------------------------------------------------------------------------------------------

# A model's folder is complete when it holds these files (it is built under a temporary name, then renamed).
COMPLETE = {"tokenizer": ("tokenizer.json", "tokenizer_config.json"),
            "magvit": ("config.json", "pytorch_model.safetensors"),
            "clip": ("open_clip_config.json", "open_clip_model.safetensors")}


# The MAGVIT-v2 that `build_world_models` trains with its defaults (seed 0, 9 bits: 99.62% of cells and
# 97.0% of scenes read back by the verifier on 500 held-out scenes), kept in the repository (3.1 MB)
# because it costs ~21 min of one core to train: `make world` and the suite start from it.
SHIPPED_MAGVIT = Path(__file__).parent / "world-magvit"


def build_world_models(out: str | Path, seed: int = 0, magvit_steps: int = 2500, magvit_rounds: int = 3,
                       clip_steps: int = 1500, magvit_from: Path | None = None) -> Path:
    """DIR/{tokenizer,magvit,clip}, each skipped when its folder is already complete. MAGVIT-v2 trains
    in `magvit_rounds` rounds of `magvit_steps`, each a fresh warm-up + cosine schedule going on
    from the last round's weights (warm restarts), on a fresh stream of scenes (seed + round); with
    `magvit_from` (e.g. SHIPPED_MAGVIT) that model folder is copied instead."""
    out = Path(out)

    def magvit(path: Path) -> Path:
        if magvit_from is not None:
            return Path(shutil.copytree(magvit_from, path))
        init = None
        for r in range(magvit_rounds):
            folder = train_magvit(path.with_name(f"{path.name}.round{r}"), steps=magvit_steps, seed=seed + r, init=init)
            if init is not None:
                shutil.rmtree(init)
            init = folder
        return init.rename(path)

    builders = {"tokenizer": build_world_tokenizer, "magvit": magvit,
                "clip": lambda path: train_clip(path, steps=clip_steps, seed=seed)}
    for name, build in builders.items():
        folder = out / name
        if all((folder / f).is_file() for f in COMPLETE[name]):
            print(f"{name}: {folder} is complete, skipped")
            continue
        print(f"{name}: building {folder}")
        partial = out / f"{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        build(partial)
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to hold tokenizer/, magvit/ and clip/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--magvit-steps", type=int, default=2500)
    parser.add_argument("--magvit-rounds", type=int, default=3)
    parser.add_argument("--clip-steps", type=int, default=1500)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one thread trains these small models fastest on a shared CPU
    build_world_models(args.out, args.seed, args.magvit_steps, args.magvit_rounds, args.clip_steps)


if __name__ == "__main__":
    main()
