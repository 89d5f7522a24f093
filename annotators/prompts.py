"""Versioned prompt templates: one YAML file per template, with an id and a content hash.

A template renders an OpenAI-style chat (system text, then a user turn holding the images and the
filled-in text). Backends adapt that one format: the OpenAI and vLLM backends take it as is
(images as data URLs), the transformers backend swaps in PIL images."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import yaml

BUILTIN_DIR = Path(__file__).parent / "prompts"
DEFAULT_PROMPTS = {"edit": "edit-v1", "generate": "generate-v1"}


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    id: str
    task: str  # "edit" | "generate"
    system: str
    user: str  # a str.format template with {instruction}
    sha256: str  # of the file's bytes: any edit changes it

    @classmethod
    def load(cls, name_or_path: str) -> "PromptTemplate":
        """A built-in id (`edit-v1`) or a path to a YAML file with id, task, system, user."""
        path = builtin_or_file(name_or_path, "prompt template")
        data = path.read_bytes()
        spec = yaml.safe_load(data)
        missing = {"id", "task", "system", "user"} - set(spec or {})
        if missing:
            raise ValueError(f"{path}: prompt template lacks {sorted(missing)}")
        if "{instruction}" not in spec["user"]:
            raise ValueError(f"{path}: the user template must contain {{instruction}}")
        return cls(spec["id"], spec["task"], spec["system"].strip(), spec["user"].strip(),
                   hashlib.sha256(data).hexdigest())

    def messages(self, instruction: str, images: list[bytes]) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": data_url(image)}}
                                       for image in images]
        parts.append({"type": "text", "text": self.user.replace("{instruction}", instruction)})
        return [{"role": "system", "content": self.system}, {"role": "user", "content": parts}]


def builtin_or_file(name_or_path: str, what: str) -> Path:
    """A built-in id (a name without suffix, looked up in annotators/prompts/) or a YAML file path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = BUILTIN_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))
        raise ValueError(f"{what} {name_or_path!r} not found (built-in: {known})")
    return path


def data_url(image: bytes) -> str:
    mime = "image/jpeg" if image[:3] == b"\xff\xd8\xff" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(image).decode()}"


def load_prompts(edit: str | None = None, generate: str | None = None) -> dict[str, PromptTemplate]:
    prompts = {"edit": PromptTemplate.load(edit or DEFAULT_PROMPTS["edit"]),
               "generate": PromptTemplate.load(generate or DEFAULT_PROMPTS["generate"])}
    for task, prompt in prompts.items():
        if prompt.task != task:
            raise ValueError(f"template {prompt.id!r} is for {prompt.task!r}, used for {task!r}")
    return prompts
