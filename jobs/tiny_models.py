"""Tiny models with random weights, in the published formats, for tests and the offline demo.

Nothing is downloaded: each builder writes a folder that loads through the same code path as the
real checkpoint (`from_pretrained` on a local directory)."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForImageTextToText,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLProcessor,
    Qwen2TokenizerFast,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from pipeline.image_tokenizer import MagvitV2
from trainer.model import MMaDAConfig, MMaDAModel
from trainer.model_io import save_model

# A vocabulary-building corpus: enough words for the BPE to learn merges, nothing more.
_CORPUS = [
    "Change the colour of the red circle to blue and keep everything else unchanged.",
    "Move the green square to the top right corner of the picture.",
    "Add a small yellow triangle in the bottom left, on a pale blue background.",
    "Remove the purple circle; the background stays light grey.",
    "The scene shows a large orange square in the centre and a black triangle on the left.",
    "To edit the image I first find the object named in the instruction, then decide its new state.",
] * 20

QWEN_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                       "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]

# Qwen's chat format: <|im_start|>role\n ... <|im_end|>\n, images as vision_start/image_pad/vision_end.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] in ('image', 'image_url') %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _train_bpe(special_tokens: list[str], vocab_size: int):
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(_CORPUS, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return bpe


def build_tiny_qwen25vl(out: str | Path, seed: int = 0, vocab_size: int = 600) -> Path:
    """A 2-layer Qwen2.5-VL (head_dim 64, which vLLM's CPU kernels need) with a BPE tokenizer."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = Qwen2TokenizerFast(tokenizer_object=_train_bpe(QWEN_SPECIAL_TOKENS, vocab_size), eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token=None, bos_token=None)
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112)
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                    video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE)

    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=4096, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                          "mrope_section": [8, 12, 12]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=2, hidden_size=128, intermediate_size=256, num_heads=2,
                           out_hidden_size=128, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


LLADA_SPECIAL_TOKENS = ["<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>", "<|eot_id|>",
                        "<|start_header_id|>", "<|end_header_id|>"]
# MMaDA's reserved tokens by name: a small tokenizer carries them, so TokenLayout.from_tokenizer
# finds them (the published LLaDA tokenizer holds them as unnamed reserved ids instead).
MMADA_TOKENS = ["<|soi|>", "<|eoi|>", "<|t2i|>", "<|mmu|>", "[iPAD]", "<|r2i|>", "<|interleave|>", "<|t2it|>"]
# Where the published LLaDA tokenizer (126349 entries) keeps its special tokens.
LLADA_IDS = {"<|startoftext|>": 126080, "<|endoftext|>": 126081, "<|mdm_mask|>": 126336,
             "<|start_header_id|>": 126346, "<|end_header_id|>": 126347, "<|eot_id|>": 126348}
LLADA_SIZE = 126349


def build_tiny_llada_tokenizer(out: str | Path, vocab_size: int = 800) -> Path:
    """A small byte-level BPE with LLaDA's and MMaDA's special tokens (a compact token layout)."""
    out = Path(out)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_train_bpe(LLADA_SPECIAL_TOKENS + MMADA_TOKENS, vocab_size),
                                        bos_token="<|startoftext|>", eos_token="<|endoftext|>", mask_token="<|mdm_mask|>")
    tokenizer.save_pretrained(out)
    return out


def build_published_llada_tokenizer(out: str | Path, vocab_size: int = 800) -> Path:
    """A tokenizer in the published LLaDA layout: 126349 entries, special tokens at LLaDA's ids, MMaDA's
    reserved ids unnamed. Its first ids are a small BPE; the rest are placeholders no text maps to."""
    spec = json.loads(_train_bpe([], vocab_size).to_str())
    vocab = dict(spec["model"]["vocab"])
    by_id = {i: t for t, i in LLADA_IDS.items()}
    for i in range(len(vocab), LLADA_SIZE):
        vocab[by_id.get(i, f"<|reserved_{i}|>")] = i
    spec["model"]["vocab"] = vocab
    spec["added_tokens"] = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True} for t, i in LLADA_IDS.items()]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                        bos_token="<|startoftext|>", eos_token="<|endoftext|>", mask_token="<|mdm_mask|>")
    assert len(tokenizer) == LLADA_SIZE
    out = Path(out)
    tokenizer.save_pretrained(out)
    return out


def build_published_layout_mmada(out: str | Path, seed: int = 0, d_model: int = 64) -> Path:
    """A tiny MMaDA in the published -M layout: the published LLaDA-size tokenizer and an embedding of
    134656 rows (LLaDA's 126464 padded text ids + 8192 codes), random weights, saved as the
    published checkpoints are (config.json, model.safetensors, tokenizer files)."""
    torch.manual_seed(seed)
    config = MMaDAConfig(d_model=d_model, n_heads=4, n_layers=2, mlp_hidden_size=2 * d_model,
                         embedding_size=134656, vocab_size=126464, max_sequence_length=4096)
    save_model(MMaDAModel(config), out)
    return build_published_llada_tokenizer(out)


def build_random_magvitv2(out: str | Path, seed: int = 0) -> Path:
    """Full-size MAGVIT-v2 with random weights, saved in the published `showlab/magvitv2` layout."""
    torch.manual_seed(seed)
    return MagvitV2().save_pretrained(out)


TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}


def build_tiny_clip(out: str | Path, seed: int = 0) -> Path:
    """A tiny open_clip CLIP with random weights, saved as an open_clip folder (load it with
    `local-dir:<out>`, the format open_clip's hub models use); its BPE ships with open_clip."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP)
    preprocess = {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": preprocess}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "open_clip_model.safetensors")
    return out
