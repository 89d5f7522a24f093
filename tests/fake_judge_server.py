"""A scripted OpenAI-compatible judge for `trainer eval` and `pipeline score` tests.

It reads the criterion ("Criterion: text quality.") and the instruction (fenced as data after
"Instruction:") from the rubric prompt and answers with a fixed score per criterion (BASE), so a test can work out the
expected table by hand. Markers in the instruction change the answers: `[judge:+N]` / `[judge:-N]`
shift every score; `[judge:garbage]` answers nonsense (with a stray number, but no score);
`[judge:range]` answers "Score: 140"; `[judge:reject]` answers HTTP 400; `[judge:down]` answers
HTTP 503 (an outage); `[judge:=N]` sets the score to N. `[judge:KIND@dimension]` applies a marker to
one dimension only. GET /stats returns every request's criterion, instruction
and number of images. `--delay-s` answers after that long, as a model does.

    python tests/fake_judge_server.py --port 8124 [--delay-s 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import re

from aiohttp import web

BASE = {"text_quality": 80, "text_alignment": 70, "image_consistency": 60, "image_alignment": 50,
        "image_quality": 90, "output_alignment": 40,  # trainer eval's (judge-v1)
        "instruction_following": 75, "reasoning_following": 65, "consistency": 85, "quality": 55}  # score-v1
CRITERION = re.compile(r"Criterion: ([a-z ]+)\.")
INSTRUCTION = re.compile(r"Instruction:\n<data (\w+)>\n(.*?)\n</data \1>", re.S)
MARKER = re.compile(r"\[judge:([a-z]+|[+=-]\d+)(?:@([a-z_]+))?\]")
GARBAGE = "Banana clouds whisper 7 purple theorems; the ledger of moths is closed."


def answer(dimension: str, instruction: str) -> tuple[int, str]:
    """-> (HTTP status, content)."""
    score = BASE[dimension]
    for kind, only in MARKER.findall(instruction):
        if only and only != dimension:
            continue
        if kind == "garbage":
            return 200, GARBAGE
        if kind == "range":
            return 200, "Far beyond every expectation.\nScore: 140"
        if kind == "reject":
            return 400, "rejected"
        if kind == "down":
            return 503, "overloaded"
        score = int(kind[1:]) if kind.startswith("=") else score + int(kind)
    return 200, f"The {dimension.replace('_', ' ')} is as expected for this output.\nScore: {score}"


class Script:
    def __init__(self, delay_s: float = 0.0):
        self.log: list[dict] = []
        self.delay_s = delay_s

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        parts = [p for m in body["messages"] if isinstance(m["content"], list) for p in m["content"]]
        text = "\n".join([m["content"] for m in body["messages"] if isinstance(m["content"], str)]
                         + [p["text"] for p in parts if p["type"] == "text"])
        dimension = CRITERION.search(text).group(1).replace(" ", "_")
        instruction = INSTRUCTION.search(text).group(2)
        self.log.append({"dimension": dimension, "instruction": instruction, "seed": body.get("seed"),
                         "images": sum(p["type"] == "image_url" for p in parts)})
        status, content = answer(dimension, instruction)
        if self.delay_s:  # a model's time to write the answer
            await asyncio.sleep(self.delay_s)
        if status != 200:
            return web.json_response({"error": {"message": content}}, status=status)
        return web.json_response({
            "id": "chatcmpl-judge", "object": "chat.completion", "created": 0, "model": body.get("model", "judge"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(text.split()), "completion_tokens": len(content.split()),
                      "total_tokens": len(text.split()) + len(content.split())}})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": len(self.log), "log": self.log})


if __name__ == "__main__":
    from fake_openai_server import chat_app  # run as a script: this folder is on sys.path

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-s", type=float, default=0.0)
    args = parser.parse_args()
    web.run_app(chat_app(Script(args.delay_s)), host="127.0.0.1", port=args.port, print=None, access_log=None)
