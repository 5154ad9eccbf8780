"""`promptport serve`: the provider's side after POST. One teacher answers many users' transferred
prompts over an OpenAI-compatible HTTP API, batching requests of different tenants into one forward
pass.

    from promptport.serve import ServeConfig, serve
    serve(ServeConfig(model="smollm2-135m-instruct", registry="prompts", keys="keys.yaml"))

Modules: `registry` (verified prompts on disk, per tenant), `engine` (the batched forward passes),
`batching` (collecting concurrent requests), `app` (the FastAPI routes), `vllm` (export for vLLM's
prompt-embeddings input).
"""

from __future__ import annotations

import ipaddress
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

from promptport.errors import BadInput
from promptport.options import setting


@dataclass
class ServeConfig:
    model: str = setting(
        "smollm2-135m-instruct", "The teacher to serve (the model prompts were transferred to)."
    )
    registry: str = setting(
        "prompts", "Folder of registered prompts (REGISTRY/tenants/TENANT/ID/); created if missing."
    )
    host: str = setting(
        "127.0.0.1", "Address to bind. Without --keys only a loopback address is allowed."
    )
    port: int = setting(8000, "Port to bind.")
    keys: str | None = setting(
        None,
        "YAML file mapping tenant -> API key (or a list of keys). Without it: one tenant 'default', no authentication, loopback only.",
    )
    max_batch: int = setting(16, "Most rows in one forward pass; 1 turns batching off.")
    max_wait_ms: float = setting(
        5.0, "How long a request waits for others to share its forward pass."
    )
    max_input_tokens: int = setting(
        512,
        "Most tokens of one input (classification inputs are cut from the left, as in evaluate).",
    )
    max_new_tokens: int = setting(256, "Largest max_tokens a completion may ask for.")
    max_inputs: int = setting(64, "Most inputs (or prompts) in one request.")
    max_body_bytes: int = setting(1 << 20, "Largest request body (uploads: --max-upload-bytes).")
    max_upload_bytes: int = setting(64 << 20, "Largest prompt upload.")
    max_concurrency: int = setting(16, "Most concurrent requests per API key (more answer 429).")
    threads: int = setting(0, "Torch threads (0: torch's default).")
    device: str = setting("cpu", "cpu, cuda or auto.", cli=False)  # the common --device option
    dtype: str = setting(
        "float32",
        "Weights' dtype: float32, bfloat16 or float16.",
        choices=("float32", "bfloat16", "float16"),
    )

    def checked(self) -> ServeConfig:
        """The settings, refused with the field's name where a limit is out of range."""
        for name in (
            "max_batch",
            "max_input_tokens",
            "max_new_tokens",
            "max_inputs",
            "max_body_bytes",
            "max_upload_bytes",
            "max_concurrency",
        ):
            if getattr(self, name) < 1:
                raise BadInput(name, f"must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise BadInput("max_wait_ms", f"must be >= 0, got {self.max_wait_ms}")
        return self


def load_keys(path: str | Path) -> dict[str, str]:
    """API key -> tenant from a YAML mapping `tenant: key` or `tenant: [key, ...]` (safe_load)."""
    from promptport.fileio import read_yaml_mapping
    from promptport.serve.registry import ID_RE

    data = read_yaml_mapping(path, "keys")
    keys: dict[str, str] = {}
    for tenant, value in data.items():
        if not isinstance(tenant, str) or not ID_RE.match(tenant):
            raise BadInput("keys", f"tenant {tenant!r} is not a valid id")
        for k in value if isinstance(value, list) else [value]:
            if not isinstance(k, str) or len(k) < 16:
                raise BadInput(
                    "keys", f"tenant '{tenant}': a key must be a string of 16+ characters"
                )
            if k in keys:
                raise BadInput("keys", f"tenant '{tenant}' shares a key with '{keys[k]}'")
            keys[k] = tenant
    if not keys:
        raise BadInput("keys", f"{path} names no tenant")
    return keys


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(
                ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None)
            )
        except OSError:
            return False


def build(cfg: ServeConfig):
    """(app, registry): the model loaded, the registry opened and verified, the routes made."""
    import torch

    from promptport.models import load_model
    from promptport.serve.app import create_app
    from promptport.serve.engine import ServeEngine
    from promptport.serve.registry import PromptRegistry

    cfg.checked()
    keys = load_keys(cfg.keys) if cfg.keys else None
    if keys is None and not is_loopback(cfg.host):
        raise BadInput(
            "host", f"{cfg.host} is not loopback: give --keys to serve beyond this machine"
        )
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    lm = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    engine = ServeEngine(lm, cfg.max_input_tokens)
    registry = PromptRegistry.open(cfg.registry, lm.info, lm.tokenizer, engine.device)
    return create_app(engine, registry, keys=keys, limits=cfg), registry


def serve(cfg: ServeConfig, log=print) -> None:
    """Run the server until SIGINT/SIGTERM; in-flight requests are answered before it returns."""
    import uvicorn

    app, registry = build(cfg)
    for s in registry.skipped:
        log(f"serve: not serving {s}")
    who = (
        "tenants from --keys"
        if cfg.keys
        else "no --keys: loopback only, one tenant 'default', no authentication"
    )
    log(f"serve: {cfg.model}, {len(registry)} prompts, http://{cfg.host}:{cfg.port}/v1 ({who})")
    # uvicorn drains in-flight requests on SIGTERM/SIGINT and then re-raises the signal to whatever
    # handler was there before it; a no-op handler makes a drained shutdown a normal exit (code 0).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.run(
        app, host=cfg.host, port=cfg.port, log_level="warning", timeout_graceful_shutdown=None
    )
    log("serve: stopped after answering every accepted request")
