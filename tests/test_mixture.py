"""The general student's mixture: many templates and label-word sets, public text only."""

from __future__ import annotations

import torch

from promptport.mixture import UnionScores, build_mixture_examples, general_tasks, union_label_ids
from promptport.models import load_tokenizer

try:  # the one-task builder (moved to promptport.corpus by the distill split)
    from promptport.corpus import build_task_examples
except ImportError:  # pragma: no cover
    from promptport.distill import build_task_examples


def test_general_tasks_cover_many_formats():
    tasks = general_tasks()
    templates = {t.template for t in tasks}
    assert len(templates) == len(tasks) >= 10  # one per distinct template
    names = {t.name for t in tasks}
    assert {"sst2", "agnews", "tweet_eval", "mpqa", "mix_question_type", "mix_yes_no"} <= names
    assert all(len(t.template_fields) == 1 for t in tasks)


def test_mixture_examples_spread_over_templates(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    texts = [f"the movie number {i} was great and the plot is thin" for i in range(200)]
    tasks = general_tasks()
    ids, meta, chosen = build_mixture_examples(
        tok, texts, n=3 * len(tasks) + 1, build_fn=build_task_examples, seed=0, prefix_prob=0.0
    )
    assert len(ids) == len(chosen) == meta["examples"] == 3 * len(tasks) + 1
    assert set(meta["templates"]) == {t.name for t in tasks}
    assert all(v["examples"] in (3, 4) for v in meta["templates"].values())
    decoded = [tok.decode(x) for x in ids]
    # every template's answer cue appears at the end of some example
    for t in tasks:
        cue = t.template.split("{text}")[1]
        assert any(d.endswith(cue) for d in decoded), cue
    # deterministic
    again, _, _ = build_mixture_examples(
        tok, texts, n=3 * len(tasks) + 1, build_fn=build_task_examples, seed=0, prefix_prob=0.0
    )
    assert again == ids


def test_union_scores_select_every_label_word(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    u = union_label_ids(tok)
    scores = UnionScores(tok)
    v = torch.randn(3, len(tok))
    out = scores(v)
    assert out.shape == (3, len(u)) and torch.equal(out, v[:, u])


def test_general_distillation_runs_on_the_mixture(tmp_path, tiny_model_dir):
    """`task_template: general`: the task terms run over the mixture and the label term over the union
    of its label words."""
    from promptport.distill import DistillConfig, distill

    text = tmp_path / "public.txt"
    text.write_text(
        "\n".join(f"the movie number {i} was great and the plot is thin ." for i in range(120))
    )
    cfg = DistillConfig(
        layers=2, corpus=[str(text)], max_tokens=512, block_size=32, heldout_blocks=2,
        precision="fp32", alpha_task=1.0, alpha_label=1.0, task_template="general",
        task_data=[str(text)], task_examples=60, task_heldout=12, max_steps=2, batch_size=4,
        task_batch_size=8, prefix_prob=0.5,
    )  # fmt: skip
    r = distill(str(tiny_model_dir), tmp_path / "d", cfg)
    import json

    m = json.loads((tmp_path / "d" / "metrics.json").read_text())
    task_meta = json.dumps(m)
    assert "mix_question_type" in task_meta and "general" in task_meta
    assert r is None or r.get("steps", 2) == 2
