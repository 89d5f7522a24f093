"""A scripted OpenAI-compatible chat server for fault injection and client benchmarks.

Behaviour is chosen per sample by a marker in the request's text, `[fault:KIND]` or
`[fault:KINDxN]` (the first N requests for that sample misbehave, later ones answer well), so a test
knows exactly what each sample will meet. Kinds: 500, 429 (with Retry-After), 400, timeout,
malformed, empty, leak, refusal, short, length, trickle (the body a byte at a time over --hang-s),
retryinf / retrysoon / retrylong (429 with Retry-After inf / soon / 86400). Without a marker the server answers with a good
trace, at once or after `--delay-s` (a model's time to write it). The log keeps each request's
image sizes, as decoded from its data URLs. With --api-key, any other key gets a 401; GET
/v1/models lists the model "fake".

    python tests/fake_openai_server.py --port 8123 [--retry-after 0.2] [--hang-s 5]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import io
import json
import re
import time

from aiohttp import web

RETRY_AFTER = {"retryinf": "inf", "retrysoon": "soon", "retrylong": "86400"}  # 429s with these headers
MARKER = re.compile(r"\[fault:([a-z0-9]+?)(?:x(\d+))?\]")
INSTRUCTION = re.compile(r'(?:instruction|Prompt): "(.*?)"', re.S)


def image_sizes(body: dict) -> list[list[int]]:
    from PIL import Image

    urls = [p["image_url"]["url"] for m in body["messages"] if isinstance(m["content"], list)
            for p in m["content"] if p.get("type") == "image_url"]
    return [list(Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1]))).size) for u in urls]


def good_trace(instruction: str) -> str:
    return (f"The request is to {instruction.strip().rstrip('.').lower()}. First I look at the scene as it "
            "stands and find the object that the request names, with its colour, its size and its place "
            "in the grid.\n\nThen I decide exactly what has to change: only that object is affected, and "
            "its new state must follow the words of the request. Everything else in the scene, the other "
            "shapes and the background colour, must stay as it is, so the picture keeps its layout.")


ANSWERS = {
    "empty": ("", "stop"),
    "leak": ("Looking at the target image, the circle is blue now. " * 6, "stop"),
    "refusal": ("I'm sorry, but I cannot help with editing this picture as requested by the user today. " * 4, "stop"),
    "short": ("Make it blue.", "stop"),
    "length": None,  # a good text, cut off: finish_reason "length"
}


class Script:
    def __init__(self, retry_after: float, hang_s: float, delay_s: float = 0.0, api_key: str | None = None,
                 served: tuple[str, ...] = ("fake",)):
        self.retry_after, self.hang_s, self.delay_s = retry_after, hang_s, delay_s
        self.api_key, self.served = api_key, served  # the key it demands (None: any); the models it lists
        self.seen: collections.Counter[str] = collections.Counter()
        self.log: list[dict] = []  # one entry per request: key, kind, time

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        text = " ".join(p.get("text", "") for m in body["messages"] if isinstance(m["content"], list)
                        for p in m["content"]) + " ".join(m["content"] for m in body["messages"]
                                                          if isinstance(m["content"], str))
        instruction = (INSTRUCTION.search(text) or [None, text])[1]
        marker = MARKER.search(instruction)
        self.seen[instruction] += 1
        kind = None
        if marker:
            limit = int(marker.group(2)) if marker.group(2) else None
            if limit is None or self.seen[instruction] <= limit:
                kind = marker.group(1)
        self.log.append({"key": instruction, "kind": kind, "t": time.monotonic(), "seed": body.get("seed"),
                         "auth": request.headers.get("Authorization"), "images": image_sizes(body)})
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "invalid api key"}}, status=401)
        if kind in RETRY_AFTER:  # a 429 whose Retry-After is junk or huge: the client must not obey it blindly
            return web.json_response({"error": {"message": "slow down"}}, status=429,
                                     headers={"Retry-After": RETRY_AFTER[kind]})
        if kind == "trickle":  # headers at once, then the body a byte at a time over hang_s
            return await self.trickle(request, instruction)
        if kind == "400":
            return web.json_response({"error": {"message": "injected: this request is invalid"}}, status=400)
        if kind == "500":
            return web.json_response({"error": {"message": "injected"}}, status=500)
        if kind == "429":
            return web.json_response({"error": {"message": "slow down"}}, status=429,
                                     headers={"Retry-After": str(self.retry_after)})
        if kind == "timeout":
            await asyncio.sleep(self.hang_s)
        elif self.delay_s:  # a model's time to write the answer
            await asyncio.sleep(self.delay_s)
        if kind == "malformed":
            return web.Response(text='{"id": "x", "choices": [', content_type="application/json")
        content, finish = ANSWERS.get(kind) or (good_trace(instruction), "stop")
        if kind == "length":
            content, finish = good_trace(instruction)[:80], "length"
        return web.json_response(self.completion(content, finish, text, body.get("model", "fake")))

    async def trickle(self, request: web.Request, instruction: str) -> web.StreamResponse:
        body = json.dumps(self.completion(good_trace(instruction), "stop", "")).encode()
        response = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": str(len(body))})
        await response.prepare(request)
        for i in range(len(body)):
            await response.write(body[i:i + 1])
            await asyncio.sleep(self.hang_s / len(body))
        return response

    @staticmethod
    def completion(content: str, finish: str, text: str, model: str = "fake") -> dict:
        return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
                "usage": {"prompt_tokens": len(text.split()), "completion_tokens": len(content.split()),
                          "total_tokens": len(text.split()) + len(content.split())}}

    async def models(self, request: web.Request) -> web.Response:
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "invalid api key"}}, status=401)
        return web.json_response({"object": "list", "data": [{"id": m, "object": "model"} for m in self.served]})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": len(self.log), "log": self.log})


def make_app(retry_after: float = 0.2, hang_s: float = 5.0, delay_s: float = 0.0,
             api_key: str | None = None) -> web.Application:
    return chat_app(Script(retry_after, hang_s, delay_s, api_key))


def chat_app(script) -> web.Application:
    """The routes of a scripted chat server: `script.chat` answers, `script.stats` tells what it saw."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", script.chat)
    app.router.add_get("/stats", script.stats)
    if hasattr(script, "models"):
        app.router.add_get("/v1/models", script.models)
    app.router.add_get("/health", lambda r: web.Response(text="ok"))
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--retry-after", type=float, default=0.2)
    parser.add_argument("--hang-s", type=float, default=5.0)
    parser.add_argument("--delay-s", type=float, default=0.0, help="seconds before every answer, like a model's")
    parser.add_argument("--api-key", default=None, help="answer 401 to any other key")
    args = parser.parse_args()
    web.run_app(make_app(args.retry_after, args.hang_s, args.delay_s, args.api_key), host="127.0.0.1", port=args.port, print=None,
                access_log=None)
