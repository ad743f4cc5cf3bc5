"""Drives `cai serve` with the official `openai` client.

Usage: serve_client.py BASE_URL OPS_JSON  (the key comes from OPENAI_API_KEY)

OPS_JSON is a list of {"op": "create" | "stream" | "stream_final" | "models",
"args": {...}}; "stream_final" streams through the client's own stream helper
and returns the completion it reassembled from the chunks (tool-call
arguments joined the way the library joins them);
extra fields the client does not know go in args["extra_body"]. Prints one
JSON result per op: the reply (model_dump), the streamed chunks with their
arrival times in seconds since the request started, or the error the client
raised (class, status, body).
"""

import json
import sys
import time

import openai


def main():
    base_url, ops = sys.argv[1], json.loads(sys.argv[2])
    client = openai.OpenAI(base_url=base_url, max_retries=0, timeout=60)
    results = []
    for op in ops:
        args = op.get("args", {})
        try:
            if op["op"] == "create":
                results.append({"reply": client.chat.completions.create(**args).model_dump()})
            elif op["op"] == "stream":
                start = time.monotonic()
                chunks = []
                for chunk in client.chat.completions.create(stream=True, **args):
                    chunks.append({"t": time.monotonic() - start, "chunk": chunk.model_dump()})
                results.append({"chunks": chunks, "total": time.monotonic() - start})
            elif op["op"] == "stream_final":
                helper = getattr(client.chat.completions, "stream", None) or client.beta.chat.completions.stream
                with helper(**args) as stream:
                    for _ in stream:
                        pass
                    results.append({"final": stream.get_final_completion().model_dump()})
            elif op["op"] == "models":
                results.append({"models": [m.id for m in client.models.list()]})
            else:
                raise ValueError(op["op"])
        except openai.APIStatusError as e:
            results.append({"error": type(e).__name__, "status": e.status_code, "body": e.body})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
