import collections
import json
from pathlib import Path

import pytest

from annotators import PromptTemplate, ValidatorConfig, load_prompts
from annotators.validators import build_rules, validate

GOOD = ("The instruction asks to make the red circle in the top left blue. First I find the red circle: "
        "it is small and sits in the top left cell of the grid, on a light grey background. Then the plan "
        "is to change only its colour to blue, keeping its size and its place. The green square on the "
        "right and the background must stay exactly as they are.")


def reason(text, finish="stop", **cfg):
    return validate(build_rules(ValidatorConfig(**cfg)), text, finish)[0]


@pytest.mark.parametrize("text, finish, expected", [
    (GOOD, "stop", None),
    ("   ", "stop", "empty_trace"),
    (GOOD, "length", "truncated"),
    ("Make it blue now.", "stop", "too_short"),
    (GOOD + " word" * 500, "stop", "too_long"),
    (GOOD + " In the answer image the circle is blue.", "stop", "target_leak"),
    ("The question image shows a circle. " + GOOD, "stop", "target_leak"),
    ("I'm sorry, but " + GOOD, "stop", "refusal"),
    ("the circle is blue and " * 30, "stop", "repetition_loop"),
    ("Le cercle rouge en haut à gauche doit devenir bleu; le carré vert reste à droite, et le fond gris "
     "clair ne change pas. Je trouve d'abord le cercle, puis je change sa couleur sans toucher sa taille "
     "ni sa place dans la grille, ni les autres formes, ni le fond de l'image du tout.", "stop", "wrong_language"),
])
def test_each_rule(text, finish, expected):
    assert reason(text, finish) == expected


def test_thresholds_and_disabling():
    assert reason("Make it blue now.", min_words=3) is None
    assert reason(GOOD + " In the answer image the circle is blue.", disabled=["leakage"]) is None
    verdicts = validate(build_rules(ValidatorConfig()), GOOD, "stop")[1]
    assert set(verdicts) == {"empty", "truncated", "too_short", "too_long", "leakage", "refusal",
                             "repetition", "language"} and set(verdicts.values()) == {"pass"}
    with pytest.raises(ValueError, match="unknown validator"):
        build_rules(ValidatorConfig(disabled=["spelling"]))


def test_leak_rule_precision_recall():
    """The leak rule on a labelled set: plans that name the image to be made ("the final image should
    show") must pass, traces that describe the target as seen ("the final image shows") must not."""
    path = Path(__file__).parent / "data" / "leak_traces.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    others = ["empty", "truncated", "too_short", "too_long", "refusal", "repetition", "language"]
    rules = build_rules(ValidatorConfig(disabled=others))
    n, flagged, wrong = collections.Counter(), collections.Counter(), []
    tp = fp = fn = 0
    for row in rows:
        leak = validate(rules, row["text"], "stop")[0] == "target_leak"
        n[row["kind"]] += 1
        flagged[row["kind"]] += leak
        tp, fp, fn = tp + (leak and row["leak"]), fp + (leak and not row["leak"]), fn + (row["leak"] > leak)
        if leak != row["leak"]:
            wrong.append(f"  {'missed' if row['leak'] else 'false alarm'} ({row['kind']}): {row['text']}")
    precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    print(f"\nleak validator on tests/data/leak_traces.jsonl ({len(rows)} traces)")
    print(f"{'kind':<20}{'n':>5}{'flagged':>10}")
    for kind in sorted(n):
        print(f"{kind:<20}{n[kind]:>5}{flagged[kind]:>10}")
    print(f"precision {precision:.3f}  recall {recall:.3f}")
    print("misclassified:" if wrong else "misclassified: none", *wrong, sep="\n")
    assert {"observed_target", "plan_mentions_output", "plan_no_mention"} <= set(n) and len(rows) >= 120
    assert precision >= 0.95 and recall >= 0.95


def test_prompt_templates(tmp_path):
    prompts = load_prompts()
    assert (prompts["edit"].id, prompts["generate"].id) == ("edit-v1", "generate-v1")
    messages = prompts["edit"].messages("Make it blue.", [b"\x89PNG in", b"\x89PNG out"])
    parts = messages[1]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"]
    assert parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert '"Make it blue."' in parts[2]["text"]
    custom = tmp_path / "mine.yaml"
    custom.write_text("id: mine-v1\ntask: edit\nsystem: Plan the edit.\nuser: 'Instruction: {instruction}'\n")
    mine = PromptTemplate.load(str(custom))
    assert mine.id == "mine-v1" and mine.sha256 != prompts["edit"].sha256
    custom.write_text("id: mine-v1\ntask: edit\nsystem: Plan the edit!\nuser: 'Instruction: {instruction}'\n")
    assert PromptTemplate.load(str(custom)).sha256 != mine.sha256  # any edit changes the hash
    with pytest.raises(ValueError, match="is for 'edit'"):
        load_prompts(generate=str(custom))
    custom.write_text("id: x\ntask: edit\nsystem: s\nuser: no placeholder\n")
    with pytest.raises(ValueError, match="must contain"):
        PromptTemplate.load(str(custom))
