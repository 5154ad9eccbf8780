"""What the classification transfer (`promptport.transfer`) and the generation transfer
(`promptport.gen_transfer`) share: the method's alpha, the public examples, the result of the
optimisation, the teacher prompt's start and the stage manifest."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from promptport.data import TextDataset
from promptport.errors import BadInput
from promptport.manifest import write_manifest
from promptport.prompt import PromptArtifact
from promptport.tasks import Task


def method_alpha(method: str, alpha: float) -> float:
    return {"post": alpha, "output": 0.0, "shift": 1.0}[method]


AUTO_TEACHER_TOKENS = (None, 10, 1)  # `n_tokens: auto`: the user's length, 10 and 1 tokens


def teacher_lengths(value: int | str | None, user_n: int) -> list[int]:
    """The teacher prompt lengths `n_tokens` asks for, in order and without repeats: one (a number, or
    None: the user's prompt's length) or several to choose between ('auto': the user's length, 10
    and 1; or comma-separated numbers such as '50,10,1')."""
    bad = BadInput(
        "n_tokens",
        f"must be a positive number, several comma-separated ('50,10,1') or 'auto', got {value!r}",
    )
    if isinstance(value, bool):
        raise bad
    if value is None:
        return [user_n]
    if isinstance(value, int):
        parts: list = [value]
    elif str(value).strip() == "auto":
        parts = [user_n if n is None else n for n in AUTO_TEACHER_TOKENS]
    else:
        try:
            parts = [int(x) for x in str(value).split(",")]
        except ValueError:
            raise bad from None
    if not parts or any(n <= 0 for n in parts):
        raise bad
    return list(dict.fromkeys(parts))


def teacher_init(
    cfg, t_lm, artifact: PromptArtifact, task: Task, n_tokens: int | None = None
) -> torch.Tensor | None:
    """The teacher prompt's start: None (a copy of the user's prompt) or, with `init: text`, the
    embeddings of the task's description in the teacher's vocabulary, cycled or cut to `n_tokens`
    (default: the one length `cfg.n_tokens` gives; several are chosen between by the classification
    transfer only)."""
    if cfg.init != "text":
        return None
    from promptport.prompt import init_prompt_embeddings

    if n_tokens is None:
        lengths = teacher_lengths(cfg.n_tokens, artifact.n_tokens)
        if len(lengths) > 1:
            raise BadInput(
                "n_tokens",
                f"choosing between teacher prompt lengths ({cfg.n_tokens!r}) is for classification "
                "tasks; give one length",
            )
        n_tokens = lengths[0]
    return init_prompt_embeddings(t_lm.model, t_lm.tokenizer, n_tokens, "text", task.description)


def user_init(artifact: PromptArtifact, s_lm, task: Task) -> torch.Tensor:
    """The user's prompt before tuning, rebuilt on the student from what the prompt records (its
    tuning config's init, init text and seed, and the task's description or label words): the same
    call `promptport tune` made, so the same embeddings."""
    from promptport.prompt import init_prompt_embeddings, label_text

    cfg = (artifact.meta.get("training") or {}).get("config") or {}
    init = cfg.get("init")
    if init is None or "seed" not in cfg:
        raise BadInput(
            "shift_base",
            "init needs the prompt's tuning config (init, seed) in its metadata; this prompt has none",
        )
    text = cfg.get("init_text") or (label_text(task) if init == "labels" else task.description)
    return init_prompt_embeddings(
        s_lm.model,
        s_lm.tokenizer,
        artifact.n_tokens,
        init,
        text,
        generator=torch.Generator().manual_seed(int(cfg["seed"])),
    )


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


PUBLIC_CUTS = ("sentences", "phrases")


def check_public_cut(cut: str) -> None:
    if cut not in PUBLIC_CUTS:
        raise BadInput("public_cut", f"must be one of {', '.join(PUBLIC_CUTS)}, got '{cut}'")


def recut_texts(texts: list[str], chars: int, cut: str = "sentences") -> list[str]:
    """The texts, in order, re-cut into runs of whole sentences of at least `chars` characters: long
    documents become sentence-length pieces, one-liners are joined into paragraphs; a last run
    shorter than `chars` is dropped. Public text shaped like the user's inputs transfers better than
    the same text in another shape (benchmarks/README.md, public_data `length_matched`).

    cut="phrases": a sentence of at least twice `chars` characters is first split into runs of whole
    words of at least `chars` characters (its short tail joins the run before), so sentences become
    phrases where the user's inputs are phrases (MPQA: 14 characters); shorter sentences are packed
    as above, and for inputs of sentence length or more the two cuts agree."""
    check_public_cut(cut)
    pieces, run = [], ""
    for doc in texts:
        for sentence in _SENTENCE_END.split(" ".join(doc.split())):
            parts = _phrases(sentence, chars) if cut == "phrases" else [sentence]
            for part in parts:
                run = f"{run} {part}".strip()
                if len(run) >= chars:
                    pieces.append(run)
                    run = ""
    return pieces


def _phrases(sentence: str, chars: int) -> list[str]:
    """`sentence` as runs of whole words of at least `chars` characters, if it is at least twice as
    long; the tail shorter than `chars` joins the last run."""
    if len(sentence) < 2 * chars:
        return [sentence]
    runs, run = [], ""
    for word in sentence.split(" "):
        run = f"{run} {word}".strip()
        if len(run) >= chars:
            runs.append(run)
            run = ""
    if run:
        runs[-1] = f"{runs[-1]} {run}"
    return runs


def public_dataset(
    task: Task,
    texts: list[str],
    n: int,
    seed: int,
    chars: int | None = None,
    cut: str = "sentences",
) -> TextDataset:
    """Deduplicate, shuffle with the seed, take n; formatted later with the private task's template.
    `chars`: re-cut the texts first (`recut_texts`, with `cut`)."""
    given = len(texts)
    if chars:
        texts = recut_texts(texts, chars, cut)
    if len(task.template_fields) != 1:
        raise BadInput(
            "public_data",
            f"task template has fields {task.template_fields}; public transfer data "
            "needs a single-field template",
        )
    uniq = list(dict.fromkeys(t for t in texts if t.strip()))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))[:n]
    if len(uniq) < 2 and chars:  # the texts may be fine: the length no two pieces reach is not
        raise BadInput(
            "public_chars",
            f"{given} public texts re-cut into runs of at least {chars} characters give "
            f"{len(uniq)} distinct pieces, fewer than 2: lower public_chars",
        )
    if len(order) < 2:
        raise BadInput("public_data", f"need at least 2 distinct public texts, got {len(uniq)}")
    return TextDataset(
        {task.template_fields[0]: [uniq[i] for i in order]}, None, "public", "public"
    )


@dataclass
class TransferResult:
    embeddings: torch.Tensor
    alpha: float
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)
    seconds: float = 0.0
    cache_seconds: float = 0.0
    steps: int = 0
    tokens: int = 0
    # several teacher prompt lengths tried (`n_tokens: auto`): the rule, the choice, every candidate
    selection: dict | None = None
    stopped_early: bool = False  # `patience` held-out evaluations without a better one ended it
    # `select_data`: the labelled public set, the teacher's zero-shot and kept accuracy on it
    select_info: dict | None = None

    @classmethod
    def of_loop(
        cls,
        emb,
        alpha: float,
        history: list[dict],
        best: dict,
        seconds: float,
        cache_seconds: float,
        total: int,
        tokens: int,
    ) -> TransferResult:
        """The result of a loop planned for `total` steps: the steps run are its history's last."""
        ran = int(history[-1]["step"])
        return cls(
            emb.cpu(), alpha, history, best, seconds, cache_seconds, ran, tokens,
            stopped_early=ran < total,
        )  # fmt: skip


def loop_fields(res: TransferResult | None) -> dict:
    """What a transfer's metrics.json says of its optimisation (the same keys, empty, for `direct`)."""
    return {
        "steps": 0 if res is None else res.steps,
        "stopped_early": None if res is None else res.stopped_early,
        "best": None if res is None else res.best,
        "final_heldout_loss": None if res is None else res.history[-1].get("heldout_loss"),
        "initial_heldout_loss": None if res is None else res.history[0]["heldout_loss"],
        "train_seconds": 0.0 if res is None else round(res.seconds, 3),
        "cache_seconds": 0.0 if res is None else round(res.cache_seconds, 3),
        "tokens": 0 if res is None else res.tokens,
        "select_data": None if res is None else res.select_info,
    }


def stalled(history: list[dict], best: dict, patience: int | None) -> bool:
    """Early stopping for a transfer: `patience` held-out evaluations since the best one, none better.
    Counted from the loop's history, so a resumed loop stops where the uninterrupted one did; the
    best step's prompt is what the transfer returns either way."""
    if patience is None:
        return False
    return sum(1 for r in history if "heldout_loss" in r and r["step"] > best["step"]) >= patience


def fingerprint_prompt(prompt, artifact: PromptArtifact) -> dict:
    """The prompt input of a transfer manifest: its shape, sha256 and (given a path) where it was."""
    info = {
        "n_tokens": artifact.n_tokens,
        "hidden_size": artifact.hidden_size,
        "sha256": (artifact.meta.get("sha256") or {}).get("prompt.safetensors"),
    }
    if not isinstance(prompt, PromptArtifact):
        info["path"] = str(prompt)
    return info


def write_transfer_manifest(
    out, cfg, prompt, artifact, source_id, n_public, s_lm, t_lm, wall, outputs=None, select=None
) -> None:
    """OUT/manifest.json: the inputs with fingerprints (the prompt artifact, the public source and,
    with `select_data`, the labelled public selection set only) and the outputs with sha256."""
    inputs = {
        "prompt": fingerprint_prompt(prompt, artifact),
        "public_data": {"source": source_id, "n_examples": n_public},
        "student": s_lm.info.to_dict(),
        "teacher": t_lm.info.to_dict(),
    }
    if select:  # (TransferResult.select_info)
        inputs["select_data"] = {k: select.get(k) for k in ("data", "n", "fingerprint")}
    write_manifest(
        out,
        stage="transfer",
        config=asdict(cfg),
        inputs=inputs,
        outputs=outputs
        or [
            out / "prompt" / "prompt.safetensors",
            out / "prompt" / "prompt.json",
            out / "metrics.json",
        ],
        seconds=wall,
    )
