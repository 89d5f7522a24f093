"""The `transformers` backend: a local Qwen2.5-VL through AutoProcessor and
AutoModelForImageTextToText. One request at a time: meant for small runs and tests, not for scale."""

from __future__ import annotations

import base64
import io

from PIL import Image

from annotators.annotator import Completion, OnDone, Request, SamplingConfig, run_in_rounds


def _to_pil_parts(messages: list[dict]) -> list[dict]:
    """OpenAI-style image_url data URLs -> the {"type": "image", "image": PIL} parts processors take."""
    converted = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            converted.append({"role": message["role"], "content": [{"type": "text", "text": content}]})
            continue
        parts = []
        for part in content:
            if part["type"] == "image_url":
                data = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
                parts.append({"type": "image", "image": Image.open(io.BytesIO(data)).convert("RGB")})
            else:
                parts.append(part)
        converted.append({"role": message["role"], "content": parts})
    return converted


class TransformersBackend:
    name = "transformers"

    def __init__(self, model: str, revision: str | None = None, device: str = "auto", dtype: str = "auto"):
        # torch and transformers load when this backend is built, not when annotators is imported
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.processor = AutoProcessor.from_pretrained(model, revision=revision)
        self.model = AutoModelForImageTextToText.from_pretrained(model, revision=revision, dtype=dtype)
        self.model.to(self.device).eval()

    def run(self, requests: list[Request], sampling: SamplingConfig, on_done: OnDone) -> None:
        run_in_rounds(lambda batch: self.generate(batch, sampling), requests, on_done)

    def generate(self, requests: list[Request], sampling: SamplingConfig) -> list[Completion]:
        import torch  # optional and heavy: loaded when the backend is built (see __init__), not on import

        completions = []
        for request in requests:
            try:
                inputs = self.processor.apply_chat_template(
                    _to_pil_parts(request.messages), tokenize=True, add_generation_prompt=True,
                    return_dict=True, return_tensors="pt").to(self.device)
            except (ValueError, TypeError, OSError) as e:  # this request's inputs, not the batch's
                completions.append(Completion("", None, error=f"engine_error: {type(e).__name__}: {e}"[:500]))
                continue
            torch.manual_seed(request.seed)
            sample = sampling.temperature > 0
            with torch.inference_mode():
                output = self.model.generate(
                    **inputs, max_new_tokens=sampling.max_tokens, do_sample=sample,
                    temperature=sampling.temperature if sample else None,
                    top_p=sampling.top_p if sample else None)
            new = output[0, inputs["input_ids"].shape[1]:]
            eos = self.model.generation_config.eos_token_id
            eos = set(eos if isinstance(eos, list) else [eos])
            stopped = len(new) > 0 and int(new[-1]) in eos
            completions.append(Completion(
                self.processor.decode(new, skip_special_tokens=True),
                "stop" if stopped or len(new) < sampling.max_tokens else "length",
                int(inputs["input_ids"].shape[1]), len(new)))
        return completions
