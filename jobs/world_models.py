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

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from jobs.tiny_models import LLADA_SPECIAL_TOKENS, MMADA_TOKENS
from pipeline.demo_data import BACKGROUNDS, CELLS, COLOURS, SHAPES

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
