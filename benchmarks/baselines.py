"""The tools a user would otherwise pick, set up to do exactly our job: Hugging Face PEFT prompt tuning
(`PromptTuningConfig`) with a verbalizer loss computed the usual way (full logits at every position,
read at the answer position), and Opacus DP-SGD (`PrivacyEngine.make_private`, hooks mode) on that model.

They get the same frozen model, batch, sequence length, prompt initialisation, loss and optimiser as our
path, so a timing ratio measures only how the step is computed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def peft_prompt_model(model, init_embeddings: torch.Tensor):
    """`get_peft_model` with `PromptTuningConfig`: n virtual tokens, initialised to our prompt's values."""
    from peft import PromptTuningConfig, TaskType, get_peft_model

    n = int(init_embeddings.shape[0])
    pm = get_peft_model(
        model, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n)
    )
    emb = pm.prompt_encoder["default"].embedding
    with torch.no_grad():
        emb.weight.copy_(init_embeddings.to(emb.weight.dtype))
    return pm


def prompt_parameters(pm) -> list[torch.nn.Parameter]:
    return [p for p in pm.parameters() if p.requires_grad]


def verbalizer_loss(
    pm, verbalizer, input_ids, attention_mask, labels, n_virtual: int
) -> torch.Tensor:
    """Cross-entropy of the class scores read from the full [B, n + L, V] logits at the last real token
    (right padding: PEFT puts the virtual tokens first, so that is n + length - 1)."""
    logits = pm(input_ids=input_ids, attention_mask=attention_mask).logits
    last = n_virtual + attention_mask.sum(-1) - 1
    scores = verbalizer.scores_from_vocab(
        logits[torch.arange(logits.shape[0], device=logits.device), last]
    )
    return F.cross_entropy(scores.float(), labels)


def per_example_prompt_lookup(pm) -> None:
    """Make PEFT look the prompt up once per example, as Opacus needs.

    PEFT's `get_prompt` embeds the virtual tokens for one example and repeats the result over the batch
    (peft issue 2043). Opacus's hooks then see a batch of one: `grad_sample` is [1, n, H], the batch's
    summed gradient, and "per-example" clipping clips the batch as a single example -- no DP guarantee,
    and no error. Looking the prompt up for each example restores Opacus's per-sample gradients.
    """
    enc = pm.prompt_encoder[pm.active_adapter]
    tokens = pm.prompt_tokens[pm.active_adapter]

    def get_prompt(batch_size, task_ids=None, max_cache_len=None):
        return enc(tokens.unsqueeze(0).expand(batch_size, -1).to(enc.embedding.weight.device))

    pm.get_prompt = get_prompt


def opacus_private(
    pm,
    optimizer,
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    noise_multiplier: float,
    max_grad_norm: float,
    fix_peft: bool = True,
):
    """Opacus's `make_private` in hooks mode (per-sample gradients from forward/backward hooks) on the PEFT
    model; fixed batches (no Poisson sampling) so both sides see the same examples. `fix_peft`: apply
    `per_example_prompt_lookup` first (without it the result is not DP). Returns (module, optimizer)."""
    import warnings

    from opacus import PrivacyEngine

    if fix_peft:
        per_example_prompt_lookup(pm)

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # "secure RNG turned off": our side uses a seeded generator too
        module, opt, _ = PrivacyEngine().make_private(
            module=pm,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            grad_sample_mode="hooks",
            poisson_sampling=False,
        )
    return module, opt
