"""Record what a real SGLang server answers, as fixtures for the fast tests (standard library only).

``python3 tests/real_engine/record_fixtures.py URL OUT_DIR`` against a server started as the
tier starts it (tiny model, ``--enable-metrics``, fresh: the first scrape must precede any
request). Writes ``/metrics`` before any request, while a streamed request runs and after the
traffic (one request aborted by its client going away); ``/get_server_info``, ``/model_info``, ``/v1/models``; ``/generate`` answers (plain,
stop string, stop token, streamed SSE bytes) and an error body. ``tests/test_sglang_fixtures.py``
parses them with Voltana's reporter and client and compares the simulated engine's shapes.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

PROMPT = "the quick brown fox"


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return bytes(response.read())


def post(url: str, body: object) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), bytes(error.read())


def sampling(max_new_tokens: int, **extra: object) -> dict[str, object]:
    return {"max_new_tokens": max_new_tokens, "temperature": 0.0, **extra}


def record(url: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics_fresh.txt").write_bytes(get(f"{url}/metrics"))
    for name, path in (
        ("server_info.json", "/get_server_info"),
        ("model_info.json", "/model_info"),
        ("v1_models.json", "/v1/models"),
    ):
        body = json.loads(get(url + path))
        (out / name).write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")

    def generate(name: str, body: dict[str, object]) -> dict[str, object]:
        status, raw = post(f"{url}/generate", body)
        answer = json.loads(raw)
        (out / name).write_text(json.dumps({"status": status, "body": answer}, indent=1) + "\n")
        return dict(answer)

    plain = generate(
        "generate.json", {"text": PROMPT, "sampling_params": sampling(12, ignore_eos=True)}
    )
    ids = list(plain["output_ids"])  # type: ignore[call-overload]
    generate(
        "generate_stop_token.json",
        {"text": PROMPT, "sampling_params": sampling(12, stop_token_ids=[ids[3]])},
    )
    generate("generate_max_tokens_0.json", {"text": PROMPT, "sampling_params": sampling(0)})
    generate("generate_error.json", {"text": PROMPT, "sampling_params": {"max_new_tokens": "many"}})
    _status, raw = post(
        f"{url}/generate",
        {"text": PROMPT, "sampling_params": sampling(4, ignore_eos=True), "stream": True},
    )
    (out / "generate_stream.sse").write_bytes(raw)

    # A long streamed request in flight: the busy scrape sees it running.
    def long_request() -> None:
        post(
            f"{url}/generate",
            {"text": PROMPT, "sampling_params": sampling(1500, ignore_eos=True), "stream": True},
        )

    thread = threading.Thread(target=long_request, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = get(f"{url}/metrics")
        running = [
            line
            for line in text.decode().splitlines()
            if line.startswith("sglang:num_running_reqs{") and not line.endswith(" 0.0")
        ]
        if running:
            (out / "metrics_busy.txt").write_bytes(text)
            break
        time.sleep(0.05)
    thread.join()
    # A streamed request whose client goes away after its first chunk: SGLang aborts it.
    request = urllib.request.Request(
        f"{url}/generate",
        json.dumps(
            {"text": PROMPT, "sampling_params": sampling(1500, ignore_eos=True), "stream": True}
        ).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        response.readline()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = get(f"{url}/metrics")
        if b"sglang:num_aborted_requests_total{" in text:
            break
        time.sleep(0.1)
    (out / "metrics_after.txt").write_bytes(text)


if __name__ == "__main__":
    record(sys.argv[1].rstrip("/"), Path(sys.argv[2]))
