"""Trace validators: each a named rule with a reason code and its thresholds in `ValidatorConfig`.

A rule answers None (the trace passes) or a message saying why it fails. The rules are cheap text
checks run on every attempt; a failing trace is retried with a new seed by the annotator.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Callable

# Phrases that betray the annotator looked at the target: a plan written before the image exists
# cannot mention it. 84% of the public reference traces say "question image", 47% "answer image".
DEFAULT_LEAK_PATTERNS = [
    r"\b(answer|target|output|result(ing)?|final|second|edited|generated|reference|ground[- ]truth)\s+(image|picture|photo)\b",
    r"\bquestion\s+image\b",
    r"\b(the|this)\s+(second|2nd)\s+(one|image)\b",
    r"\bin the (provided|given) (result|output)\b",
]
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
    leak_patterns: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_LEAK_PATTERNS))
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


def build_rules(config: ValidatorConfig) -> list[Rule]:
    leaks = [re.compile(p, re.IGNORECASE) for p in config.leak_patterns]
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
        for pattern in leaks:
            if m := pattern.search(text):
                return f"refers to the target: {m.group(0)!r}"
        return None

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
