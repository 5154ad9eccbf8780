"""One POST transfer step vs one prompt-tuning step on the teacher, same batch and prompt length.

With s, s_p and t cached, a transfer step is a teacher forward+backward with the prompt plus a KL
over the vocabulary at one position per example, so it should cost about the same as a tuning step.
"""

from __future__ import annotations

import torch

from benchmarks.common import finish, interleaved, paired_ratio, parser, setup, target


def main(argv=None):
    args = parser(__doc__, model=True).parse_args(argv)
    setup()
    from promptport.classify import PromptClassifier
    from promptport.data import TextDataset, load_embedded_text
    from promptport.models import load_model
    from promptport.prompt import init_prompt_embeddings
    from promptport.tasks import get_task
    from promptport.transfer import transfer_loss

    task = get_task("rt_snippets")
    lm = load_model(args.model)
    clf = PromptClassifier(lm.model, lm.tokenizer, task, max_length=64)
    bs, n_tok = 8, 20
    texts = load_embedded_text("rt_plots", limit=bs)
    pub = TextDataset({"text": [t[:300] for t in texts]}, [0] * bs, "embedded:rt_plots", "public")
    enc = clf.encode(pub)
    ids, mask = clf.batch(enc.input_ids)
    labels = torch.zeros(bs, dtype=torch.long)
    p = torch.nn.Parameter(
        init_prompt_embeddings(lm.model, lm.tokenizer, n_tok, "text", task.description)
    )
    opt = torch.optim.Adam([p], lr=1e-3)
    V = lm.model.get_output_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(0)
    s, s_p, t = (
        torch.randn(bs, V, generator=g) for _ in range(3)
    )  # cached targets (values do not affect cost)

    def tune_step():
        loss = clf.loss(ids, mask, labels, p)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def transfer_step():
        loss = transfer_loss(clf.vocab_logits(ids, mask, p), s_p, s, t, 0.5, 2.0)
        opt.zero_grad()
        loss.backward()
        opt.step()

    # interleaved so drifting machine load hits both alike; the ratio is the median of per-round ratios
    timings = interleaved(
        {"tune": tune_step, "transfer": transfer_step}, repeats=3 if args.suite == "quick" else 7
    )
    tu, tr = timings["tune"]["times_s"], timings["transfer"]["times_s"]
    tune_s, transfer_s = timings["tune"]["median_s"], timings["transfer"]["median_s"]
    ratio = paired_ratio(timings, "transfer", "tune")
    tokens = int(mask.sum()) + n_tok * bs
    print(
        f"transfer_step tune {tune_s:.3f}s  transfer {transfer_s:.3f}s  overhead {ratio:.3f}x  "
        f"({tokens / transfer_s:.0f} tokens/s)"
    )
    finish(
        "transfer_step",
        {
            "suite": args.suite,
            "batch_size": bs,
            "prompt_tokens": n_tok,
            "seq_tokens": int(mask.sum()),
            "tune_step_s": tune_s,
            "transfer_step_s": transfer_s,
            "tune_times_s": tu,
            "transfer_times_s": tr,
            "transfer_overhead": round(ratio, 4),
            "transfer_tokens_per_s": round(tokens / transfer_s, 1),
            "target": target(ratio, 1.1, higher_is_better=False),
        },
    )


if __name__ == "__main__":
    main()
