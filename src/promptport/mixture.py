"""The general student's task mixture: public text under many task templates and label-word sets.

POST promises one student per teacher, handed to every user. A student distilled on one task's template
and label words follows the teacher there but not on a task it never saw (measured in issue 14: a
product-review user got a student its prompt could not steer). The general recipe therefore formats
public texts with a *mixture* of templates -- the built-in single-input tasks (sentiment, topic, opinion,
encyclopedia category, financial sentiment) plus question-type, yes/no and emotion formats that no
built-in task uses -- half of them behind instruction-like prefixes (task descriptions, snippets), and
matches the teacher's answer distribution at every one of them (alpha_task) and its distribution over
the union of all the mixture's label words (alpha_label), so the student learns to answer the way the
teacher does whatever the template and whatever words a user's verbalizer reads.

`distill` uses it when the recipe says `task_template: general`, the default: `promptport distill` with
no task options builds this student (on the --corpus texts unless --task-data names others).
Only public text and templates are used; labels never.
"""

from __future__ import annotations

import numpy as np
import torch

GENERAL = "general"

# Formats no built-in task covers (the "question type, yes/no, ..."): public text under them
# teaches the student to answer other kinds of questions the way the teacher does.
EXTRA_TASKS = [
    {
        "name": "mix_question_type",
        "description": "Classify what the question asks for.",
        "template": "Question: {text}\nThe question asks for a:",
        "columns": {"text": ["text"]},
        "classes": ["person", "place", "number", "description", "thing", "abbreviation"],
        "verbalizer": {
            c: [" " + c]
            for c in ["person", "place", "number", "description", "thing", "abbreviation"]
        },
    },
    {
        "name": "mix_yes_no",
        "description": "Answer yes or no: does the text express an opinion?",
        "template": "Text: {text}\nDoes this text express an opinion? Answer:",
        "columns": {"text": ["text"]},
        "classes": ["no", "yes"],
        "verbalizer": {"no": [" no"], "yes": [" yes"]},
    },
    {
        "name": "mix_emotion",
        "description": "Classify the emotion of the text.",
        "template": "Text: {text}\nEmotion:",
        "columns": {"text": ["text"]},
        "classes": ["joy", "sadness", "anger", "fear", "surprise"],
        "verbalizer": {c: [" " + c] for c in ["joy", "sadness", "anger", "fear", "surprise"]},
    },
    {
        "name": "mix_formality",
        "description": "Is the text formal or informal?",
        "template": "Text: {text}\nStyle:",
        "columns": {"text": ["text"]},
        "classes": ["formal", "informal"],
        "verbalizer": {"formal": [" formal"], "informal": [" informal"]},
    },
]


def general_tasks() -> list:
    """Every single-input classification template: the built-in ones (one per distinct template) and
    the extra formats above."""
    from promptport.tasks import builtin_tasks, task_from_dict

    out, seen = [], set()
    for t in builtin_tasks().values():
        if getattr(t, "is_generation", False) or len(t.template_fields) != 1:
            continue
        if t.template in seen:
            continue
        seen.add(t.template)
        out.append(t)
    return out + [task_from_dict(d, "mixture") for d in EXTRA_TASKS]


def build_mixture_examples(
    tokenizer,
    texts: list[str],
    *,
    n: int,
    build_fn,
    tasks: list | None = None,
    seed: int = 0,
    **kw,
) -> tuple[list[list[int]], dict, list[str]]:
    """n public examples spread evenly over the mixture's templates (each through `build_fn`, the
    one-task builder: build_task_examples), shuffled together. Returns (ids, meta, texts)."""
    tasks = tasks or general_tasks()
    rng = np.random.default_rng(seed)
    share = [n // len(tasks) + (1 if i < n % len(tasks) else 0) for i in range(len(tasks))]
    ids, chosen, per_task = [], [], {}
    for i, (task, k) in enumerate(zip(tasks, share)):
        if k == 0:
            continue
        t_ids, meta, t_texts = build_fn(tokenizer, task, texts, n=k, seed=seed + 101 * i, **kw)
        ids += t_ids
        chosen += t_texts
        per_task[task.name] = {"examples": len(t_ids), "template": task.template}
    order = rng.permutation(len(ids))
    meta = {
        "task": GENERAL,
        "examples": len(ids),
        "templates": per_task,
        "label_words": len(union_label_ids(tokenizer, tasks)),
    }
    return [ids[j] for j in order], meta, [chosen[j] for j in order]


def union_label_ids(tokenizer, tasks: list | None = None) -> list[int]:
    """First sub-token of every label word of every mixture task (distinct, sorted)."""
    ids: set[int] = set()
    for t in tasks or general_tasks():
        for words in t.verbalizer.values():
            for w in words:
                toks = tokenizer(w, add_special_tokens=False)["input_ids"]
                if len(toks) > 1 and not tokenizer.decode(toks[:1]).strip():
                    toks = toks[1:]  # a lone word-boundary marker (as classify.label_word_ids)
                if toks:
                    ids.add(toks[0])
    return sorted(ids)


class UnionScores:
    """[..., V] vocabulary logits -> [..., U] logits of the union of the mixture's label words: a softmax
    over them is the teacher's (or student's) choice among every label word any mixture task reads."""

    def __init__(self, tokenizer, tasks: list | None = None):
        self.token_ids = torch.tensor(union_label_ids(tokenizer, tasks))

    def __call__(self, vocab_logits: torch.Tensor) -> torch.Tensor:
        return vocab_logits[..., self.token_ids.to(vocab_logits.device)]
