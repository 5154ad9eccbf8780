"""The tools a user would otherwise pick, set up to do exactly our job: Hugging Face PEFT prompt tuning
(`PromptTuningConfig`) with a verbalizer loss, and Opacus DP-SGD (`PrivacyEngine.make_private`, hooks
mode) on that model. Each comes in two forms:

- naive (`verbalizer_loss`): the usual way, `pm(input_ids, attention_mask).logits` -- full-vocabulary
  logits at every position [B, n + L, V] on a right-padded batch, read at the answer position;
- fair (`fair_verbalizer_loss`): what a careful user writes -- a left-padded batch, so the answer is
  the last position for every example, and transformers' `logits_to_keep=1`, so the LM head runs on
  that position only ([B, 1, V]). Same numbers at the answer position, far fewer computed.

Both get the same frozen model, batch, prompt initialisation, loss and optimiser as our path, so the
naive ratio shows what computing logits everywhere costs, and the fair ratio what remains of our
advantage against a user who avoids that (the label-word-only projection, our DP machinery).
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
    scores = verbalizer.scores_from_vocab(
        naive_answer_logits(pm, input_ids, attention_mask, n_virtual)
    )
    return F.cross_entropy(scores.float(), labels)


def left_pad(input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_id: int):
    """A right-padded batch re-padded on the left (same tokens per row): the answer, the last real token,
    is then the last position of every row."""
    from promptport.classify import collate

    rows = [ids[m.bool()].tolist() for ids, m in zip(input_ids, attention_mask)]
    ids, mask = collate(rows, pad_id, "left")
    return ids.to(input_ids.device), mask.to(attention_mask.device)


def fair_answer_logits(pm, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, V] logits at the answer position of a LEFT-padded batch, the LM head run on that position only.

    This is PEFT's prompt-tuning forward (its prompt encoder via `get_prompt`, the virtual tokens put in
    front of the input embeddings, the mask extended) written out so that the position ids can be passed:
    PEFT drops `position_ids` for prompt tuning ("not supported ... Ignoring"), and the default positions
    count the left padding, which moves the prompt away from the text by the pad count and changes the
    result. Positions from the mask make every row compute what it does unpadded, as in the naive form.
    """
    model = pm.get_base_model()
    b = input_ids.shape[0]
    embeds = model.get_input_embeddings()(input_ids)
    prompt = pm.get_prompt(batch_size=b).to(embeds.dtype)  # [B, n, H]
    mask = torch.cat(
        [attention_mask.new_ones(b, prompt.shape[1]), attention_mask], dim=1
    )  # as PEFT does
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        inputs_embeds=torch.cat([prompt, embeds], dim=1),
        attention_mask=mask,
        position_ids=positions,
        logits_to_keep=1,
    )
    return out.logits[:, -1]


def fair_verbalizer_loss(pm, verbalizer, input_ids, attention_mask, labels) -> torch.Tensor:
    """The careful user's loss on a left-padded batch: class scores from `fair_answer_logits`."""
    scores = verbalizer.scores_from_vocab(fair_answer_logits(pm, input_ids, attention_mask))
    return F.cross_entropy(scores.float(), labels)


def naive_answer_logits(pm, input_ids, attention_mask, n_virtual: int) -> torch.Tensor:
    """[B, V] logits at the answer position, read from the full [B, n + L, V] logits (right padding)."""
    logits = pm(input_ids=input_ids, attention_mask=attention_mask).logits
    last = n_virtual + attention_mask.sum(-1) - 1
    return logits[torch.arange(logits.shape[0], device=logits.device), last]


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
