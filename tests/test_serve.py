"""`promptport serve` over real HTTP: a uvicorn server in a subprocess on a loopback port, talked to with
httpx and the official `openai` client. The served model is the tiny test LLM, so each test takes
seconds; the server is the same code that serves the embedded teacher (benchmarks/serve_load.py)."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from promptport.prompt import META_FILE, PROMPT_FILE, make_metadata, save_prompt
from promptport.tasks import get_task

KEYS = {"alice": "alice-key-0123456789abcdef", "bob": "bob-key-0123456789abcdef00"}


def make_prompt(lm, out: Path, seed: int, task="sst2", n_tokens=4) -> Path:
    g = torch.Generator().manual_seed(seed)
    std = lm.model.get_input_embeddings().weight.std().item()
    emb = torch.randn(n_tokens, lm.info.hidden_size, generator=g) * std * 3
    meta = make_metadata(model_info=lm.info, task=get_task(task), init="random", n_tokens=n_tokens)
    return save_prompt(out, emb, meta)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: Path, registry: Path, keys: Path | None, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "promptport.cli", "serve", "--model", str(model)]
        cmd += ["--registry", str(registry), "--port", str(self.port), "--threads", "1", *extra]
        if keys is not None:
            cmd += ["--keys", str(keys)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not start")

    def client(self, tenant: str | None = None, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {KEYS[tenant]}"} if tenant else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kw)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("keys") / "keys.yaml"
    p.write_text("".join(f"{t}: {k}\n" for t, k in KEYS.items()))
    return p


def _start(root: Path, lm, model_dir: Path, keys: Path, *extra: str):
    reg = root / "registry"
    for tenant, seed in (("alice", 1), ("bob", 2)):
        make_prompt(lm, reg / "tenants" / tenant / "sentiment", seed)
    return Server(model_dir, reg, keys, *extra), reg


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory, tiny_lm, tiny_model_dir, keys_file):
    """alice/sentiment and bob/sentiment (same id, different prompts), served; shared by the tests
    that leave the registry as they found it."""
    srv, reg = _start(tmp_path_factory.mktemp("shared"), tiny_lm, tiny_model_dir, keys_file)
    yield srv, reg
    srv.stop()


@pytest.fixture()
def two_tenants(tmp_path, tiny_lm, tiny_model_dir, keys_file):
    """The same, a server of the test's own (for tests that stop it or change what is registered)."""
    srv, reg = _start(tmp_path, tiny_lm, tiny_model_dir, keys_file)
    yield srv, reg
    srv.stop()


def upload(client: httpx.Client, prompt_id: str, files: dict[str, bytes]) -> httpx.Response:
    return client.post(
        "/v1/prompts",
        data={"id": prompt_id},
        files=[("files", (name, data)) for name, data in files.items()],
    )


def prompt_files(d: Path) -> dict[str, bytes]:
    return {PROMPT_FILE: (d / PROMPT_FILE).read_bytes(), META_FILE: (d / META_FILE).read_bytes()}


def test_two_tenants_get_what_evaluate_gives(shared_server, tmp_path, tiny_model_dir, sst_like_dir):
    """The served classes and probabilities equal `promptport evaluate`'s (its logits, softmaxed) for
    each tenant's own prompt, through httpx and through the openai client's generic POST."""
    from promptport.data import load_split
    from promptport.evaluate import evaluate_baselines

    srv, reg = shared_server
    task = get_task("sst2")
    ds = load_split(task, str(sst_like_dir), "validation")
    texts = ds.fields[task.template_fields[0]]
    out = tmp_path / "eval"
    out.mkdir()
    evaluate_baselines(
        {"t": str(tiny_model_dir)},
        "sst2",
        {t: ("t", reg / "tenants" / t / "sentiment") for t in ("alice", "bob")},
        out,
        data=str(sst_like_dir),
        split="validation",
        log=lambda s: None,
    )
    served = {}
    for tenant in ("alice", "bob"):
        want = torch.softmax(torch.tensor(np.load(out / f"{tenant}.npz")["logits"]), -1).numpy()
        with srv.client(tenant) as c:
            r = c.post("/v1/classify", json={"model": "sentiment", "input": texts})
        assert r.status_code == 200, r.text
        got = np.array([[d["probs"][k] for k in task.classes] for d in r.json()["data"]])
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert [d["label_index"] for d in r.json()["data"]] == want.argmax(-1).tolist()
        served[tenant] = got
    assert not np.allclose(served["alice"], served["bob"], atol=1e-3)  # different prompts, answers

    import openai

    client = openai.OpenAI(base_url=srv.url + "/v1", api_key=KEYS["alice"])
    assert [m.id for m in client.models.list()] == ["sentiment"]
    r = client.post(
        "/classify", body={"model": "sentiment", "input": texts[0]}, cast_to=httpx.Response
    )
    assert abs(r.json()["data"][0]["probs"]["positive"] - served["alice"][0][1]) < 1e-4


def test_completions_with_the_openai_client_match_the_generator(shared_server, tiny_lm):
    """Greedy completions through the official client equal PromptGenerator-style generation with
    the same prompt (KV cache, left padding), for two prompts of different tenants in one batch."""
    import openai

    from promptport.prompt import load_prompt

    srv, reg = shared_server
    texts = ["the movie was great", "worst film of the year ."]
    for tenant in ("alice", "bob"):
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key=KEYS[tenant])
        r = client.completions.create(model="sentiment", prompt=texts, max_tokens=6, temperature=0)
        emb = load_prompt(reg / "tenants" / tenant / "sentiment").embeddings
        for text, choice in zip(texts, r.choices):
            ids = tiny_lm.tokenizer(text, return_tensors="pt")["input_ids"]
            x = torch.cat([emb, tiny_lm.model.get_input_embeddings()(ids)[0]])[None]
            with torch.inference_mode():
                seq = tiny_lm.model.generate(
                    inputs_embeds=x,
                    attention_mask=torch.ones(x.shape[:2], dtype=torch.long),
                    max_new_tokens=6,
                    do_sample=False,
                    pad_token_id=tiny_lm.tokenizer.pad_token_id,
                    eos_token_id=tiny_lm.tokenizer.eos_token_id,
                )
            toks = seq[0].tolist()
            if tiny_lm.tokenizer.eos_token_id in toks:
                toks = toks[: toks.index(tiny_lm.tokenizer.eos_token_id)]
            assert choice.text == tiny_lm.tokenizer.decode(toks, skip_special_tokens=True)
        assert r.usage.prompt_tokens > 0


def test_isolation_between_tenants(shared_server, tiny_lm, tmp_path):
    srv, reg = shared_server
    with srv.client() as anon:
        assert anon.get("/v1/models").status_code == 401
        r = anon.post("/v1/classify", json={"model": "sentiment", "input": "x"})
        assert r.status_code == 401 and r.json()["error"]["message"]
    with httpx.Client(
        base_url=srv.url, headers={"Authorization": "Bearer wrong-key-0123456789"}
    ) as c:
        assert c.get("/v1/models").status_code == 401
    make_prompt(tiny_lm, tmp_path / "only-alice", 5)
    with srv.client("alice") as alice, srv.client("bob") as bob:
        assert upload(alice, "private", prompt_files(tmp_path / "only-alice")).status_code == 201
        assert [m["id"] for m in alice.get("/v1/models").json()["data"]] == ["private", "sentiment"]
        assert [m["id"] for m in bob.get("/v1/models").json()["data"]] == ["sentiment"]
        r = bob.post("/v1/classify", json={"model": "private", "input": "the movie was great"})
        assert r.status_code == 404 and r.json()["error"]["param"] == "model"
        assert bob.delete("/v1/prompts/private").status_code == 404
        assert alice.delete("/v1/prompts/private").status_code == 200
        assert (
            alice.post("/v1/classify", json={"model": "private", "input": "a"}).status_code == 404
        )


def test_bad_prompts_are_refused_and_nothing_is_half_registered(
    two_tenants, tiny_lm, tiny_model_dir, tiny_model_dir_wide, keys_file, tmp_path
):
    from promptport.models import load_model

    srv, reg = two_tenants
    good = make_prompt(tiny_lm, tmp_path / "good", 7)
    files = prompt_files(good)
    with srv.client("alice") as c:
        # a tampered tensor file: the checksum in prompt.json no longer matches
        t = bytearray(files[PROMPT_FILE])
        t[-5] ^= 0xFF
        r = upload(c, "tampered", {PROMPT_FILE: bytes(t), META_FILE: files[META_FILE]})
        assert r.status_code == 400 and r.json()["error"]["param"] == PROMPT_FILE
        assert "checksum" in r.json()["error"]["message"]
        # a pickle, under its own name and disguised as the safetensors file
        blob = pickle.dumps({"prompt_embeddings": torch.zeros(4, 64)})
        r = upload(c, "pickled", {"adapter_model.bin": blob, META_FILE: files[META_FILE]})
        assert r.status_code == 415
        r = upload(c, "pickled", {PROMPT_FILE: blob, META_FILE: files[META_FILE]})
        assert r.status_code == 415 and r.json()["error"]["param"] == PROMPT_FILE
        # a prompt made for another model (other hidden size), and one with another model's fingerprint
        wide = load_model(str(tiny_model_dir_wide))
        r = upload(c, "wide", prompt_files(make_prompt(wide, tmp_path / "wide", 1)))
        assert r.status_code == 400 and r.json()["error"]["param"] == "hidden_size"
        meta = json.loads(files[META_FILE])
        meta["model"]["embedding_fingerprint"] = "0123456789abcdef"
        r = upload(
            c, "other", {PROMPT_FILE: files[PROMPT_FILE], META_FILE: json.dumps(meta).encode()}
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "embedding_fingerprint"
        # a tar archive with a link is refused; a clean one is taken
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tf:
            info = tarfile.TarInfo(PROMPT_FILE)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tf.addfile(info)
        r = c.post(
            "/v1/prompts", data={"id": "linked"}, files={"archive": ("p.tgz", buf.getvalue())}
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "archive"
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tf:
            tf.add(good, arcname="good")
        r = c.post(
            "/v1/prompts", data={"id": "from-tar"}, files={"archive": ("p.tgz", buf.getvalue())}
        )
        assert r.status_code == 201, r.text
        assert upload(c, "from-tar", files).status_code == 409
        ids = [m["id"] for m in c.get("/v1/models").json()["data"]]
    assert ids == ["from-tar", "sentiment"]
    assert sorted(p.name for p in (reg / "tenants" / "alice").iterdir()) == ids
    assert not any((reg / ".staging").glob("*"))
    # survives a restart as it was
    srv.stop()
    srv2 = Server(tiny_model_dir, reg, keys_file)
    try:
        with srv2.client("alice") as c:
            assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ids
    finally:
        srv2.stop()


def test_malformed_requests_answer_4xx_json(shared_server):
    srv, _ = shared_server
    with srv.client("alice") as c:
        cases = [
            (
                c.post(
                    "/v1/classify",
                    content=b"{not json",
                    headers={"content-type": "application/json"},
                ),
                400,
            ),
            (c.post("/v1/classify", json={"model": "sentiment", "input": "x", "extra": 1}), 400),
            (c.post("/v1/classify", json={"model": "sentiment", "input": 5}), 400),
            (
                c.post(
                    "/v1/completions", json={"model": "sentiment", "prompt": "x", "max_tokens": "5"}
                ),
                400,
            ),
            (
                c.post(
                    "/v1/completions",
                    json={"model": "sentiment", "prompt": "x", "max_tokens": 10**6},
                ),
                400,
            ),
            (
                c.post(
                    "/v1/completions", json={"model": "sentiment", "prompt": "x", "stream": True}
                ),
                400,
            ),
            (c.post("/v1/classify", json={"model": "sentiment", "input": ["x"] * 1000}), 400),
            (
                c.post(
                    "/v1/classify",
                    content=b"x" * (2 << 20),
                    headers={"content-type": "application/json"},
                ),
                413,
            ),
        ]
        for r, status in cases:
            assert r.status_code == status, r.text
            assert r.json()["error"]["message"]
        r = c.post(
            "/v1/completions", json={"model": "sentiment", "prompt": "x", "max_tokens": 10**6}
        )
        assert r.json()["error"]["param"] == "max_tokens"
        assert c.get("/health").json()["status"] == "ok"  # and the server still answers
        assert c.post("/v1/classify", json={"model": "sentiment", "input": "x"}).status_code == 200
        text = c.get("/metrics").text
    assert "promptport_requests_total" in text and "promptport_batch_rows_bucket" in text


def test_sigterm_drains_accepted_requests(two_tenants):
    """Requests accepted before SIGTERM are all answered (200), and the server exits 0."""
    srv, _ = two_tenants
    results: list[int] = []

    def call(i):
        with srv.client("alice" if i % 2 else "bob") as c:
            body = {
                "model": "sentiment",
                "prompt": f"the movie {i}",
                "max_tokens": 24,
                "temperature": 0,
            }
            results.append(c.post("/v1/completions", json=body).status_code)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    deadline = time.time() + 30
    while time.time() < deadline:  # every request is inside the server
        m = httpx.get(srv.url + "/metrics").text
        line = [x for x in m.splitlines() if x.startswith("promptport_in_flight ")]
        if line and float(line[0].split()[1]) >= 13:  # 12 + this /metrics call
            break
        time.sleep(0.05)
    srv.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(60)
    assert srv.proc.wait(60) == 0
    assert results == [200] * 12


def test_per_key_concurrency_limit(tmp_path, tiny_lm, tiny_model_dir, keys_file):
    """Beyond --max-concurrency requests of one key answer 429 at once; another key is not held up."""
    srv, _ = _start(
        tmp_path,
        tiny_lm,
        tiny_model_dir,
        keys_file,
        "--max-concurrency",
        "2",
        "--max-wait-ms",
        "1500",
    )
    codes: dict[str, list[int]] = {"alice": [], "bob": []}

    def call(tenant):
        with srv.client(tenant) as c:
            r = c.post("/v1/classify", json={"model": "sentiment", "input": "the movie"})
            codes[tenant].append(r.status_code)

    try:
        threads = [threading.Thread(target=call, args=("alice",)) for _ in range(5)]
        threads.append(threading.Thread(target=call, args=("bob",)))
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        srv.stop()
    assert sorted(codes["alice"]) == [200, 200, 429, 429, 429]
    assert codes["bob"] == [200]


def test_no_keys_means_loopback_only(tmp_path, tiny_model_dir):
    r = subprocess.run(
        [sys.executable, "-m", "promptport.cli", "serve", "--model", str(tiny_model_dir),
         "--registry", str(tmp_path / "r"), "--host", "0.0.0.0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2
    assert "host" in r.stderr and "--keys" in r.stderr


def test_vllm_export_gives_the_embeddings_our_server_generates_from(tmp_path, tiny_lm, capsys):
    """`promptport export --vllm`: the exported prompt + `prompt_embeds(text)` is the sequence our own
    generation feeds the model (same greedy tokens from HF generate), and the base64 form loads back
    with torch.load(weights_only=True), as vLLM reads it."""
    import base64

    from promptport.cli import main
    from promptport.serve.vllm import load_vllm_export, prompt_embeds, to_base64

    src = make_prompt(tiny_lm, tmp_path / "p", 3)
    assert main(["export", str(src), "--vllm", str(tmp_path / "v")]) == 0
    soft, meta = load_vllm_export(tmp_path / "v")
    assert meta["model"] == tiny_lm.info.model_id and meta["task"]["classes"] == [
        "negative",
        "positive",
    ]
    emb = prompt_embeds(soft, tiny_lm.model.get_input_embeddings(), tiny_lm.tokenizer, "the movie")
    ids = tiny_lm.tokenizer("the movie", return_tensors="pt")["input_ids"]
    assert emb.shape == (soft.shape[0] + ids.shape[1], tiny_lm.info.hidden_size)
    torch.testing.assert_close(emb[: soft.shape[0]], soft)
    back = torch.load(io.BytesIO(base64.b64decode(to_base64(emb))), weights_only=True)
    torch.testing.assert_close(back, emb)
    # tampering is caught
    (tmp_path / "v" / "prompt_embeds.safetensors").write_bytes(b"x" * 10)
    with pytest.raises(Exception, match="checksum"):
        load_vllm_export(tmp_path / "v")
    assert main(["export", str(src)]) == 2


def test_vllm_serves_the_export(tmp_path, tiny_lm, tiny_model_dir):
    """Where vLLM is installed (GPU machines): vLLM's greedy output for the exported prompt equals
    transformers' generate on the same embeddings."""
    vllm = pytest.importorskip("vllm", reason="vLLM is not installed here (GPU machines)")
    from promptport.prompt import load_prompt
    from promptport.serve.vllm import export_vllm, load_vllm_export, prompt_embeds

    export_vllm(load_prompt(make_prompt(tiny_lm, tmp_path / "p", 3)), tmp_path / "v")
    soft, _ = load_vllm_export(tmp_path / "v")
    emb = prompt_embeds(soft, tiny_lm.model.get_input_embeddings(), tiny_lm.tokenizer, "the movie")
    llm = vllm.LLM(model=str(tiny_model_dir), enable_prompt_embeds=True, dtype="float32")
    out = llm.generate({"prompt_embeds": emb}, vllm.SamplingParams(max_tokens=5, temperature=0))
    with torch.inference_mode():
        seq = tiny_lm.model.generate(
            inputs_embeds=emb[None], attention_mask=torch.ones(1, emb.shape[0], dtype=torch.long),
            max_new_tokens=5, do_sample=False, pad_token_id=tiny_lm.tokenizer.pad_token_id,
        )  # fmt: skip
    assert list(out[0].outputs[0].token_ids) == seq[0].tolist()[: len(out[0].outputs[0].token_ids)]


def test_an_interrupted_registration_is_never_served(tmp_path, tiny_lm):
    """A crash between writing the files and the rename leaves them in .staging: the next start clears
    them and serves only what was registered whole; a registered prompt whose file was altered on disk
    since is skipped, and named."""
    from promptport.serve.registry import PromptRegistry, Refused, files_from_tar

    root = tmp_path / "reg"
    reg = PromptRegistry.open(root, tiny_lm.info, tiny_lm.tokenizer, torch.device("cpu"))
    src = make_prompt(tiny_lm, tmp_path / "p", 1)
    reg.register_dir("alice", "ok", src)
    half = root / ".staging" / "deadbeef"
    half.mkdir(parents=True)
    (half / PROMPT_FILE).write_bytes((src / PROMPT_FILE).read_bytes()[:100])
    altered = make_prompt(tiny_lm, root / "tenants" / "alice" / "altered", 2)
    raw = bytearray((altered / PROMPT_FILE).read_bytes())
    raw[-3] ^= 0x55
    (altered / PROMPT_FILE).write_bytes(bytes(raw))
    again = PromptRegistry.open(root, tiny_lm.info, tiny_lm.tokenizer, torch.device("cpu"))
    assert [p.id for p in again.list("alice")] == ["ok"]
    assert not (root / ".staging").exists()
    assert len(again.skipped) == 1 and again.skipped[0].startswith("alice/altered")
    # archives: paths that climb out, absolute paths and oversize content are refused unread
    for name in ("../prompt.json", "/etc/prompt.json", "a/b/prompt.json"):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            info = tarfile.TarInfo(name)
            info.size = 2
            tf.addfile(info, io.BytesIO(b"{}"))
        with pytest.raises(Refused, match="not a plain prompt file"):
            files_from_tar(buf.getvalue(), 1 << 20)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo(PROMPT_FILE)
        info.size = 5000
        tf.addfile(info, io.BytesIO(b"x" * 5000))
    with pytest.raises(Refused, match="more than"):
        files_from_tar(buf.getvalue(), 1000)


def test_packed_rows_attend_row_by_row_as_the_dense_mask_and_alone(tiny_model_dir):
    """A pack of rows with two prompts: row-by-row attention gives the probabilities of the dense
    block-diagonal mask and of each row run alone (the engine's exactness does not rest on the mask)."""
    from promptport.classify import Verbalizer
    from promptport.models import load_model
    from promptport.serve.engine import ClassifyRow, ServeEngine
    from promptport.serve.registry import ServedPrompt

    lm = load_model(str(tiny_model_dir))  # its own copy: the engine sets the attention on its model
    eng = ServeEngine(lm)
    assert eng._row_attention and ServeEngine(lm)._row_attention  # a second engine keeps it
    task = get_task("sst2")
    g = torch.Generator().manual_seed(0)
    hidden = lm.model.get_input_embeddings().weight.shape[1]
    prompts = [
        ServedPrompt("t", f"p{n}", torch.randn(n, hidden, generator=g), task, {}, 0) for n in (3, 5)
    ]
    for p in prompts:
        p.verbalizer = Verbalizer(lm.tokenizer, task)
    texts = ["a fine film", "dull", "i loved every minute of it and more", "bad", "so so"]
    rows = [
        ClassifyRow(prompts[i % 2], eng.classify_ids(prompts[i % 2], [t])[0])
        for i, t in enumerate(texts)
    ]
    by_row = torch.stack(eng.classify(rows))
    alone = torch.stack([eng.classify([r])[0] for r in rows])
    eng._row_attention = False
    dense = torch.stack(eng.classify(rows))
    torch.testing.assert_close(by_row, dense, atol=1e-5, rtol=0)
    torch.testing.assert_close(by_row, alone, atol=1e-5, rtol=0)
    assert not torch.allclose(
        by_row[0], by_row[1], atol=1e-4
    )  # the rows differ, so the check bites
