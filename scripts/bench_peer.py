#!/usr/bin/env python3
"""The hand-written peer of `bench_engine` scenario 2.

A plain asyncio client (standard library only: keep-alive HTTP/1.1 over
`asyncio.open_connection`, `json`) that does for each prompt what
`cai generate` does with one revision round: an answer, a critique and a
revision, each request carrying the stage's system message, the
constitution's few-shot conversation and the conversation so far. It
checks no budget, writes no journal and no dataset, so its CPU per request
is a floor for "the same HTTP work in a scripting language", read beside
cai's in the same run on the same fake.

    python3 scripts/bench_peer.py --url http://127.0.0.1:PORT/v1 \
        --prompts prompts.csv --constitution principles/harmless.json \
        --concurrency 256

Prints one JSON object: requests, CPU seconds (user + system), wall
seconds and the mean request body in bytes.
"""

import argparse
import asyncio
import csv
import json
import resource
import sys
import time
from urllib.parse import urlsplit


def few_shot_messages(constitution):
    """The few-shot turns, flattened the way cai's constitution reader does."""
    keys = [
        ("user", "input"),
        ("assistant", "initial_answer"),
        ("user", "critique_principle"),
        ("assistant", "critique"),
        ("user", "revision_principle"),
        ("assistant", "revision"),
    ]
    out = []
    for shot in constitution.get("critique_revision_few_shots", []):
        out.extend({"role": r, "content": shot[k]} for r, k in keys)
    return out


class Client:
    """One keep-alive connection, one request at a time."""

    def __init__(self, host, port, path):
        self.host, self.port, self.path = host, port, path
        self.reader = self.writer = None
        self.sent_bytes = 0

    async def connect(self):
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def chat(self, model, messages):
        body = json.dumps({"model": model, "messages": messages}).encode()
        self.sent_bytes += len(body)
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        await self.writer.drain()
        status = await self.reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"status {status!r}")
        length, chunked = None, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        if chunked:
            data = b""
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readline()
                    break
                data += await self.reader.readexactly(size)
                await self.reader.readline()
        else:
            data = await self.reader.readexactly(length or 0)
        return json.loads(data)["choices"][0]["message"]["content"]


async def run(args):
    with open(args.constitution, encoding="utf-8") as f:
        constitution = json.load(f)
    with open(args.prompts, newline="", encoding="utf-8") as f:
        prompts = [row["prompt"] for row in csv.DictReader(f)]
    shots = few_shot_messages(constitution)
    principle = constitution["critique_revision_principles"][0]
    systems = [
        constitution["system_message_user_prompt"],
        constitution["system_message_critique"],
        constitution["system_message_revision"],
    ]
    u = urlsplit(args.url)
    path = u.path.rstrip("/") + "/chat/completions"
    queue = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    clients = [Client(u.hostname, u.port, path) for _ in range(args.concurrency)]
    await asyncio.gather(*(c.connect() for c in clients))

    async def worker(client):
        done = 0
        while not queue.empty():
            prompt = queue.get_nowait()
            convo = [{"role": "user", "content": prompt}]
            answer = await client.chat(args.model, [{"role": "system", "content": systems[0]}, *shots, *convo])
            convo += [{"role": "assistant", "content": answer}, {"role": "user", "content": principle["critique"]}]
            critique = await client.chat(args.model, [{"role": "system", "content": systems[1]}, *shots, *convo])
            convo += [{"role": "assistant", "content": critique}, {"role": "user", "content": principle["revision"]}]
            await client.chat(args.model, [{"role": "system", "content": systems[2]}, *shots, *convo])
            done += 3
        client.writer.close()
        return done

    start = time.monotonic()
    requests = sum(await asyncio.gather(*(worker(c) for c in clients)))
    wall = time.monotonic() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    sent = sum(c.sent_bytes for c in clients)
    print(
        json.dumps(
            {
                "requests": requests,
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "wall_s": wall,
                "mean_body_bytes": sent / max(requests, 1),
            }
        )
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="API root, e.g. http://127.0.0.1:8080/v1")
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--constitution", required=True)
    ap.add_argument("--model", default="fake-model")
    ap.add_argument("--concurrency", type=int, default=256)
    args = ap.parse_args()
    if urlsplit(args.url).hostname not in ("127.0.0.1", "localhost"):
        sys.exit("bench_peer.py only talks to 127.0.0.1")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
