"""Files promptport loads are data, never code: a pickle with a payload where a checkpoint or a prompt
is expected is refused without running the payload."""

import os
import pickle

import pytest

from promptport.errors import BadInput


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"format": "promptport.tune-checkpoint/1", "x": Payload(marker)}))


def test_pickle_checkpoint_refused_without_executing(tmp_path, tiny_lm, sst_like_dir):
    from promptport.classify import PromptClassifier
    from promptport.data import load_split
    from promptport.tasks import get_task
    from promptport.tune import CHECKPOINT_FILE, TuneConfig, train_prompt

    marker = tmp_path / "pwned"
    ckpt = tmp_path / "ckpt"
    _evil(ckpt / CHECKPOINT_FILE, marker)
    task = get_task("sst2")
    clf = PromptClassifier(tiny_lm.model, tiny_lm.tokenizer, task, 32)
    train = clf.encode(load_split(task, str(sst_like_dir), "train"))
    with pytest.raises(BadInput, match="cannot read"):
        train_prompt(
            clf,
            train,
            None,
            TuneConfig(n_tokens=2, max_steps=1, batch_size=4),
            checkpoint_dir=ckpt,
            resume=True,
        )
    assert not marker.exists()


def test_pickle_as_prompt_refused_without_executing(tmp_path):
    from promptport.prompt import load_prompt

    marker = tmp_path / "pwned"
    d = tmp_path / "prompt"
    d.mkdir()
    (d / "prompt.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(BadInput, match="not a safetensors prompt file"):
        load_prompt(d)
    assert not marker.exists()


def test_yaml_config_is_loaded_safely(tmp_path):
    from promptport.pipeline import load_run_config

    marker = tmp_path / "pwned"
    f = tmp_path / "evil.yaml"
    f.write_text(f"run_dir: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(BadInput):
        load_run_config(f)
    assert not marker.exists()
