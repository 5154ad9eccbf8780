"""A shared soft prompt run once per batch (its keys and values shared by every input) against the
prompt in front of every input (what PEFT's prompt tuning does): a training step (forward + backward
into the prompt) and an evaluation pass, on the embedded default's shapes (50-token prompt, public
reviews cut to 96 tokens, batch 16), timed round-robin in one run; the logits and gradients agree.

    python -m benchmarks.prompt_prefix --repeats 3
"""

from __future__ import annotations

import torch

from benchmarks.common import finish, interleaved, paired_ratio, parser, setup


def main(argv=None) -> dict:
    ap = parser(__doc__, suite=None, model=True)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--n-tokens", type=int, default=50)
    ap.add_argument("--max-length", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    setup(args.threads)
    from promptport.classify import PromptClassifier
    from promptport.data import load_texts
    from promptport.models import load_model
    from promptport.prompt import init_prompt_embeddings
    from promptport.tasks import get_task
    from promptport.transfer_common import public_dataset

    lm = load_model(args.model)
    task = get_task("rt_snippets")
    clf = PromptClassifier(lm.model, lm.tokenizer, task, args.max_length)
    texts = load_texts("embedded:rt_reviews")[0]
    enc = clf.encode(public_dataset(task, texts, args.batch, 0))
    ids, mask = clf.batch(enc.input_ids)
    init = init_prompt_embeddings(
        lm.model, lm.tokenizer, args.n_tokens, "text", text=task.description
    )
    p = torch.nn.Parameter(init.clone().float())

    def per_input():  # the prompt in front of each input: the concatenation path
        return p.unsqueeze(0).expand(ids.shape[0], -1, -1)

    def step(prompt_fn):
        def run():
            p.grad = None
            clf.class_logits(ids, mask, prompt_fn()).logsumexp(-1).sum().backward()
            return p.grad.clone()

        return run

    def evaluate(prompt_fn):
        def run():
            with torch.inference_mode():
                return clf.class_logits(ids, mask, prompt_fn().detach())

        return run

    fns = {
        "step_shared": step(lambda: p),
        "step_per_input": step(per_input),
        "eval_shared": evaluate(lambda: p),
        "eval_per_input": evaluate(per_input),
    }
    g_shared, g_per = fns["step_shared"](), fns["step_per_input"]()
    l_shared, l_per = fns["eval_shared"](), fns["eval_per_input"]()
    timings = interleaved(fns, repeats=args.repeats, warmup=0)
    for k, v in timings.items():
        print(k, round(v["median_s"], 3), flush=True)
    return finish(
        "prompt_prefix",
        {
            "shapes": {
                "batch": args.batch,
                "prompt_tokens": args.n_tokens,
                "input_tokens_mean": round(float(mask.sum()) / len(enc), 1),
                "padded_length": ids.shape[1],
            },
            "timings": timings,
            "step_speedup": round(paired_ratio(timings, "step_per_input", "step_shared"), 3),
            "eval_speedup": round(paired_ratio(timings, "eval_per_input", "eval_shared"), 3),
            "max_abs_logit_difference": float((l_shared - l_per).abs().max()),
            "max_abs_gradient_difference": float((g_shared - g_per).abs().max()),
            "gradient_scale": float(g_per.abs().max()),
        },
    )


if __name__ == "__main__":
    main()
