"""Trace validators: each a named rule with a reason code and its thresholds in `ValidatorConfig`.

A rule answers None (the trace passes) or a message saying why it fails. The rules are cheap text
checks run on every attempt; a failing trace is retried with a new seed by the annotator.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Callable

# Target leaks. The annotator sees the target image, the trained model never does: a trace must read
# as a plan written before the image exists. A plan may well talk about the image to be made ("the
# final image should show...", "keep the composition in the edited picture"); what leaks is the
# target described as seen ("the final image shows...", "in the result the car is now red"). So the
# rule judges observation, not vocabulary: a reference to the target leaks when the nearest verb or
# cue in its clause observes (present/past: shows, is, has, looking at, visible in) rather than plans
# (will, should, must, is to, needs, keeps, make sure, imperatives). Matching vocabulary alone ("final
# image", "output image") rejected most good plans that name the image to be made and missed leaks
# worded otherwise (tests/data/leak_traces.jsonl measures both).
#
# Always a leak: the annotator prompt's own words ("question/answer image"; 84% and 47% of the public
# reference traces say them), a second image, both images, ground truth, the provided result.
DEFAULT_LEAK_PATTERNS = [
    r"\b(question|answer)\s+(image|picture|photo(graph)?)s?\b",
    r"\b(the|this|that)\s+(second|2nd|other)\s+(image|picture|photo(graph)?)\b",
    r"\b(with|to|and|against|than)\s+the\s+(second|2nd)\s+one\b",
    r"\b(both|the two)\s+(images|pictures|photos)\b",
    r"\bground[- ]?truth\b",
    r"\b(provided|given|supplied)\s+(result|output|target|answer|solution)\b",
]
# What names the image to be made. "the target" as the object of the edit ("the target of the
# edit", "the target object") is not the target image.
DEFAULT_TARGET_PATTERNS = [
    r"\b(the|this|that)\s+((?!(the|this|that|a|an)\b)\w+\s+)?"  # one more word: "the provided edited image"
    r"(final|output|outcome|result(ing)?|edited|edit|generated|target|answer|reference|expected|desired"
    r"|transformed|modified|corrected|finished|completed|changed|updated|altered|new|after)"
    r"\s+(image|picture|photo(graph)?|version|output|result|one|render(ing)?|frame|scene)\b",
    r"\b(the|this|that)\s+(result|output|answer|second\s+one)\b",
    r"\b(the|this|that)\s+target\b(?!\s+(of|object|area|region|colou?r|shape|word|person|item)\b)",
]
# Words that say the target is seen: present or past verbs and looking-cues.
DEFAULT_OBSERVATION_PATTERNS = [
    r"\b(is|are|was|were|has|had|shows|showed|shown|depicts|depicted|displays|displayed|contains|contained"
    r"|features|featured|reveals|revealed|includes|included|presents|portrays|looks|looked|appears|appeared"
    r"|seems|seemed|confirms|confirmed|kept|stayed|remained|became|turned)\b",
    r"\b(now|already|clearly|visible|seen|see|sees|saw|notice\w*|observ\w*|evident|judging|compar\w*)\b",
    r"\b(look(ing)?\s+at|based\s+on|according\s+to)\b",
    r"^\s+[a-z]+[^s\W]s\b",  # a third-person verb right after the reference: "the result places"
]
# Words that make the sentence a plan: modals, future, "is to", infinitives, invariance ("keeps"),
# imperatives and the words that govern a wish ("make sure", "so that", "the goal for").
DEFAULT_PLAN_PATTERNS = [
    r"\b(will|would|should|shall|must|can|could|may|might|ought|needs?|needed|requires?|ha(s|ve)\s+to)\b",
    r"\b(is|are|was|were)\s+(not\s+)?(to|going\s+to|meant\s+to|supposed\s+to|expected\s+to|required\s+to)\b",
    r"\bto\s+(be|show|have|look|contain|include|display|feature|depict|keep|stay|remain|match|read|produce"
    r"|create|draw|render|generate|get|make|place|put|add|remove|become|hold|sit|stand|appear)\b",
    r"\b(keeps?|stays?|remains?|retains?|preserves?)\b",
    r"\b(make|ensure|let|place|draw|paint|add|remove|put|render|create|generate|produce|replace|fill|set"
    r"|drawing|creating|producing|generating|rendering|making|want|wants|so\s+that|such\s+that|in\s+order"
    r"|important\s+that|if|once|until|when|goal|aim|aiming|intend\w*|plan(ned|ning)?)\b",
]
# Where a clause ends, for the words before and after a reference. Commas end the words before it
# ("Based on the instruction, the final image should...") but not those after it ("In the result,
# the car is now red").
_CLAUSE_BEFORE = re.compile(r"[,:;]|\b(?:and|but|while|whereas|although|because|then)\b|\bso\b(?!\s+that)",
                            re.I)
_CLAUSE_AFTER = re.compile(r"[;:]|\b(?:but|while|whereas|although|because)\b", re.I)
_LOCATIVE = re.compile(r"\b(?:in|on|within|inside)\s*$", re.I)
_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+|;")

DEFAULT_REFUSAL_PATTERNS = [
    r"\b(i'?m|i am) (sorry|unable|not able)\b", r"\bi (cannot|can't|can not|won't)\b",
    r"\bas an ai\b", r"\bi apologi[sz]e\b", r"\bunable to (assist|help|comply)\b",
]
# The most frequent English words: a trace in English has plenty of them.
_ENGLISH = set("the a an and or of to in on at is are be it this that with for as by from its must will "
               "should then so which what where while into onto over under left right".split())


@dataclasses.dataclass(kw_only=True)
class ValidatorConfig:
    min_words: int = 40
    max_words: int = 400
    # target_leak: always-leak phrases, then references to the target judged by the verbs around them
    leak_patterns: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_LEAK_PATTERNS))
    target_patterns: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_TARGET_PATTERNS))
    observation_patterns: list[str] = dataclasses.field(
        default_factory=lambda: list(DEFAULT_OBSERVATION_PATTERNS))
    plan_patterns: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_PLAN_PATTERNS))
    refusal_patterns: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_REFUSAL_PATTERNS))
    repetition_ngram: int = 4
    max_repeated_ngram_fraction: float = 0.3  # share of n-grams that repeat an earlier one
    language: str | None = "en"  # None: accept any language
    min_language_score: float = 0.12  # share of words that are common English words
    disabled: list[str] = dataclasses.field(default_factory=list)  # rule names to skip


@dataclasses.dataclass(frozen=True)
class Rule:
    name: str
    reason: str
    check: Callable[[str, str | None], str | None]  # (text, finish_reason) -> failure message


def _words(text: str) -> list[str]:
    return re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)?", text.lower())


def _first(patterns: list[re.Pattern], text: str, last: bool = False) -> int | None:
    """Where the earliest (or, with `last`, the latest) match of any pattern in `text` starts, leading
    spaces skipped."""
    found = [m.start() + len(m.group(0)) - len(m.group(0).lstrip())
             for p in patterns for m in (p.finditer(text) if last else [p.search(text)]) if m]
    return (max if last else min)(found, default=None)


def _marker(plan: list[re.Pattern], observation: list[re.Pattern], text: str,
            last: bool = False) -> str | None:
    """-> "plan", "observation" or None: which kind of word comes first (last) in `text`; a tie (the
    "is" of "is to", the "has" of "has to") goes to the plan."""
    p, o = _first(plan, text, last), _first(observation, text, last)
    if o is None or (p is not None and (p >= o if last else p <= o)):
        return "plan" if p is not None else None
    return "observation"


def find_leak(text: str, always: list[re.Pattern], targets: list[re.Pattern], observation: list[re.Pattern],
              plan: list[re.Pattern]) -> str | None:
    """-> the phrase that shows the trace saw the target, or None.

    Per reference to the target, within its clause: the nearest plan or observation word before it
    decides ("looking at the result" leaks, "make sure the result has" does not); failing that, the
    first one after it ("the result has" leaks, "the result will have" does not); failing both, a
    reference that is a place leaks ("In the target, the girl holds...").
    """
    for pattern in always:
        if m := pattern.search(text):
            return m.group(0)
    for sentence in _SENTENCES.split(text):
        for pattern in targets:
            for ref in pattern.finditer(sentence):
                before = _CLAUSE_BEFORE.split(sentence[:ref.start()])[-1]
                after = _CLAUSE_AFTER.split(sentence[ref.end():], maxsplit=1)[0]
                verdict = (_marker(plan, observation, before, last=True) or _marker(plan, observation, after)
                           or ("observation" if _LOCATIVE.search(before) else None))
                if verdict == "observation":  # quote the reference with up to 4 words either side
                    start = ref.start() - len(before) + re.search(r"(\S+\s+){0,4}$", before).start()
                    return sentence[start:ref.end() + re.match(r"(\s*\S+){0,4}", after).end()].strip()
    return None


def build_rules(config: ValidatorConfig) -> list[Rule]:
    leaks = [re.compile(p, re.IGNORECASE) for p in config.leak_patterns]
    targets = [re.compile(p, re.IGNORECASE) for p in config.target_patterns]
    observation = [re.compile(p, re.IGNORECASE) for p in config.observation_patterns]
    plan = [re.compile(p, re.IGNORECASE) for p in config.plan_patterns]
    refusals = [re.compile(p, re.IGNORECASE) for p in config.refusal_patterns]

    def empty(text, _):
        return "the trace is empty" if not text.strip() else None

    def truncated(_, finish_reason):
        return "generation stopped at max_tokens" if finish_reason == "length" else None

    def too_short(text, _):
        n = len(text.split())
        return f"{n} words < min_words {config.min_words}" if n < config.min_words else None

    def too_long(text, _):
        n = len(text.split())
        return f"{n} words > max_words {config.max_words}" if n > config.max_words else None

    def leak(text, _):
        phrase = find_leak(text, leaks, targets, observation, plan)
        return f"refers to the target as seen: {phrase!r}" if phrase else None

    def refusal(text, _):
        for pattern in refusals:
            if m := pattern.search(text):
                return f"refusal or apology: {m.group(0)!r}"
        return None

    def repetition(text, _):
        words, n = _words(text), config.repetition_ngram
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        if not grams:
            return None
        repeats = sum(c - 1 for c in collections.Counter(grams).values())
        share = repeats / len(grams)
        return (f"{share:.0%} of {n}-grams repeat (> {config.max_repeated_ngram_fraction:.0%})"
                if share > config.max_repeated_ngram_fraction else None)

    def language(text, _):
        words = _words(text)
        if config.language is None or not words:
            return None
        if config.language != "en":
            raise ValueError(f"language check supports 'en' or None, not {config.language!r}")
        ascii_share = sum(w.isascii() for w in words) / len(words)
        score = sum(w in _ENGLISH for w in words) / len(words)
        if ascii_share < 0.9 or score < config.min_language_score:
            return f"not English (common-word share {score:.2f}, ASCII share {ascii_share:.2f})"
        return None

    rules = [Rule("empty", "empty_trace", empty), Rule("truncated", "truncated", truncated),
             Rule("too_short", "too_short", too_short), Rule("too_long", "too_long", too_long),
             Rule("leakage", "target_leak", leak), Rule("refusal", "refusal", refusal),
             Rule("repetition", "repetition_loop", repetition), Rule("language", "wrong_language", language)]
    unknown = set(config.disabled) - {r.name for r in rules}
    if unknown:
        raise ValueError(f"unknown validator(s) {sorted(unknown)}; known: {[r.name for r in rules]}")
    return [r for r in rules if r.name not in config.disabled]


def validate(rules: list[Rule], text: str, finish_reason: str | None) -> tuple[str | None, dict[str, str]]:
    """-> (reason code of the first failing rule or None, verdict per rule)."""
    verdicts, first = {}, None
    for rule in rules:
        message = rule.check(text, finish_reason)
        verdicts[rule.name] = "pass" if message is None else f"{rule.reason}: {message}"
        if message is not None and first is None:
            first = rule.reason
    return first, verdicts
