"""Load test of `promptport serve` on loopback: concurrent clients of several tenants send
classification requests (one input each) to a real uvicorn server, with batching across tenants
(--max-batch 16) and with batching off (--max-batch 1, the same server otherwise).

    python -m benchmarks.serve_load [--model M] [--clients 16] [--tenants 4] [--requests 8]

Each tenant has its own 20-token prompt for the teacher (initialised from a different task
description: what is measured is serving, not accuracy). Each client sends its requests one after
the other (a closed loop), all clients at once. The two servers run `--rounds` times each in
alternating order (on, off, off, on, ...), so load that drifts hits both alike; requests per second
are totals over the rounds. Both servers must give the same probabilities
(`answers_max_abs_diff`). Loopback only, bounded by the request count. Writes
benchmarks/results/serve_load.json: `batching_speedup` (requests per second, batched over
unbatched), and per mode `requests_per_s`, `latency_p50_s`, `latency_p99_s`, `mean_batch_rows`;
`engine_ceiling`: the same rows through the engine alone (no HTTP), one at a time and packed, which
bounds what batching can gain on this machine.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import finish, parser, sentiment_split, setup, target

DESCRIPTIONS = [
    "Classify the sentiment of this movie review as positive or negative.",
    "Is the critic's opinion of the film favourable? Answer positive or negative.",
    "Read the review snippet and say whether the reviewer liked the movie.",
    "Decide if this short text expresses a positive or a negative view.",
]


def make_registry(model: str, root: Path, tenants: int, task, n_tokens: int) -> dict[str, str]:
    """tenant -> API key; each tenant's prompt at root/tenants/TENANT/sentiment."""
    from promptport.models import load_model
    from promptport.prompt import init_prompt_embeddings, make_metadata, save_prompt

    lm = load_model(model)
    keys = {}
    for i in range(tenants):
        tenant = f"tenant{i}"
        emb = init_prompt_embeddings(
            lm.model, lm.tokenizer, n_tokens, "text", DESCRIPTIONS[i % len(DESCRIPTIONS)]
        )
        meta = make_metadata(model_info=lm.info, task=task, init="text", n_tokens=n_tokens)
        save_prompt(root / "tenants" / tenant / "sentiment", emb, meta)
        keys[tenant] = f"{tenant}-key-{os.urandom(12).hex()}"
    return keys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model, registry, keys_file, max_batch, threads, max_wait_ms):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "promptport.cli", "serve", "--model", model]
        cmd += ["--registry", str(registry), "--keys", str(keys_file), "--port", str(self.port)]
        cmd += ["--max-batch", str(max_batch), "--threads", str(threads)]
        cmd += ["--max-wait-ms", str(max_wait_ms), "--max-concurrency", "64"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        self.proc.kill()
        raise SystemExit("server did not start in 300 s")

    def mean_batch_rows(self) -> float | None:
        import httpx

        text = httpx.get(self.url + "/metrics").text
        s = re.search(r'promptport_batch_rows_sum\{kind="classify"\} (\S+)', text)
        c = re.search(r'promptport_batch_rows_count\{kind="classify"\} (\S+)', text)
        return float(s.group(1)) / float(c.group(1)) if s and c and float(c.group(1)) else None

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(120)


async def _load(url, keys, texts, clients, requests) -> tuple[float, list[float], dict]:
    """All clients at once, each a closed loop of `requests` single-input requests; (wall, latencies,
    {(client, i): probs})."""
    import httpx

    tenants = list(keys)
    lat: list[float] = []
    answers: dict = {}

    async def client(c: int):
        tenant = tenants[c % len(tenants)]
        headers = {"Authorization": f"Bearer {keys[tenant]}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as h:
            for i in range(requests):
                text = texts[(c * requests + i) % len(texts)]
                t0 = time.perf_counter()
                r = await h.post("/v1/classify", json={"model": "sentiment", "input": text})
                lat.append(time.perf_counter() - t0)
                r.raise_for_status()
                answers[(c, i)] = list(r.json()["data"][0]["probs"].values())

    t0 = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    return time.perf_counter() - t0, lat, answers


def measure(args, registry, keys_file, keys, texts, max_batch) -> dict:
    srv = Server(args.model, registry, keys_file, max_batch, args.threads, args.max_wait_ms)
    try:
        # warm-up: every tenant once (its prompt's cached keys and values), outside the timing
        asyncio.run(_load(srv.url, keys, texts, len(keys), 1))
        wall, lat, answers = asyncio.run(_load(srv.url, keys, texts, args.clients, args.requests))
        rows = srv.mean_batch_rows()
    finally:
        rc = srv.stop()
    return {"wall_s": wall, "latencies": lat, "answers": answers, "batch": rows, "exit": rc}


def engine_ceiling(model: str, registry: Path, texts: list[str], tenants: int, batch: int) -> dict:
    """The forward passes alone, in this process: rows per second one at a time and packed `batch` at
    a time (same rows, prompt caches warm). What batching can gain before any HTTP is involved."""
    import torch

    from promptport.models import load_model
    from promptport.serve.engine import ClassifyRow, ServeEngine
    from promptport.serve.registry import PromptRegistry

    torch.set_num_threads(2)
    lm = load_model(model)
    eng = ServeEngine(lm)
    reg = PromptRegistry.open(registry, lm.info, lm.tokenizer, eng.device)
    prompts = [reg.get(f"tenant{i}", "sentiment") for i in range(tenants)]
    rows = []
    for i in range(4 * batch):
        p = prompts[i % tenants]
        assert p is not None
        rows.append(ClassifyRow(p, eng.classify_ids(p, [texts[i % len(texts)]])[0]))
    for p in prompts:  # warm: each prompt's cached keys and values
        eng.classify([ClassifyRow(p, rows[0].ids)])
    t0 = time.perf_counter()
    for r in rows:
        eng.classify([r])
    one = time.perf_counter() - t0
    t0 = time.perf_counter()
    for s in range(0, len(rows), batch):
        eng.classify(rows[s : s + batch])
    packed = time.perf_counter() - t0
    torch.set_num_threads(1)
    return {
        "rows": len(rows),
        "mean_row_tokens": round(sum(len(r.ids) for r in rows) / len(rows), 2),
        "rows_per_s_one_at_a_time": round(len(rows) / one, 3),
        f"rows_per_s_packed_{batch}": round(len(rows) / packed, 3),
        "speedup": round(one / packed, 3),
    }


def main(argv=None) -> dict:
    ap = parser(__doc__, suite=None, model=True)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--tenants", type=int, default=4)
    ap.add_argument("--requests", type=int, default=8, help="requests per client")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each server, alternating")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--n-tokens", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2, help="the server's torch threads")
    args = ap.parse_args(argv)
    setup(1)  # this process only sends requests; the server gets the cores
    task, ds = sentiment_split("test", 256)
    texts = next(iter(ds.fields.values()))
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        registry = Path(tmp) / "registry"
        keys = make_registry(args.model, registry, args.tenants, task, args.n_tokens)
        keys_file = Path(tmp) / "keys.yaml"
        keys_file.write_text("".join(f"{t}: {k}\n" for t, k in keys.items()))
        ceiling = engine_ceiling(args.model, registry, texts, args.tenants, args.max_batch)
        print(f"engine alone: packed {args.max_batch} rows {ceiling['speedup']:.2f}x one at a time")
        runs: dict[str, list[dict]] = {"batched": [], "unbatched": []}
        for r in range(args.rounds):
            order = ["batched", "unbatched"] if r % 2 == 0 else ["unbatched", "batched"]
            for mode in order:
                mb = args.max_batch if mode == "batched" else 1
                runs[mode].append(measure(args, registry, keys_file, keys, texts, mb))
                print(f"round {r} {mode:9s} {runs[mode][-1]['wall_s']:.2f} s", flush=True)
    n = args.clients * args.requests
    modes = {}
    for mode, rs in runs.items():
        lat = np.array([x for r in rs for x in r["latencies"]])
        wall = sum(r["wall_s"] for r in rs)
        modes[mode] = {
            "requests": n * len(rs),
            "wall_s": round(wall, 3),
            "requests_per_s": round(n * len(rs) / wall, 3),
            "latency_p50_s": round(float(np.percentile(lat, 50)), 4),
            "latency_p99_s": round(float(np.percentile(lat, 99)), 4),
            "mean_batch_rows": [None if r["batch"] is None else round(r["batch"], 2) for r in rs],
            "server_exit_codes": [r["exit"] for r in rs],
        }
    diff = max(
        float(np.max(np.abs(np.array(a[k]) - np.array(b[k]))))
        for a, b in zip(
            (r["answers"] for r in runs["batched"]), (r["answers"] for r in runs["unbatched"])
        )
        for k in a
    )
    speedup = modes["batched"]["requests_per_s"] / modes["unbatched"]["requests_per_s"]
    return finish(
        "serve_load",
        {
            "model": args.model,
            "clients": args.clients,
            "tenants": args.tenants,
            "requests_per_client": args.requests,
            "rounds": args.rounds,
            "max_batch": args.max_batch,
            "max_wait_ms": args.max_wait_ms,
            "server_threads": args.threads,
            "prompt_tokens": args.n_tokens,
            "task": task.name,
            "batching_speedup": round(speedup, 3),
            "target_batching_speedup": target(speedup, 3.0),
            "answers_max_abs_diff": diff,
            "engine_ceiling": ceiling,
            **modes,
        },
    )


if __name__ == "__main__":
    main()
