"""benchmarks.dp_class_shares: the counts and recalls it reports are the predictions' own."""

import torch
from benchmarks.dp_class_shares import class_shares


def test_a_majority_class_prompt_shows_as_one_class_answered():
    labels = [0, 0, 1, 1, 1, 2]
    always_one = torch.tensor([[0.0, 1.0, 0.0]] * 6)  # answers class 1 whatever the input
    r = class_shares(always_one, labels)
    assert r["pred_counts"] == [0, 6, 0] and r["label_counts"] == [2, 3, 1]
    assert r["recall"] == [0.0, 1.0, 0.0] and r["accuracy"] == 0.5  # the majority share, no more
    perfect = torch.nn.functional.one_hot(torch.tensor(labels), 3).float()
    assert class_shares(perfect, labels)["recall"] == [1.0, 1.0, 1.0]
    assert class_shares(always_one[:2], [0, 1])["recall"] == [0.0, 1.0, None]  # no class-2 example
