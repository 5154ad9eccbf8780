"""Property-based input fuzzing: every generated config or data file either works or fails with exit
code 2 and one line naming the bad field — never a traceback, never a half-written output."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promptport.cli import main
from promptport.errors import BadInput

odd_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r"),
    min_size=0,
    max_size=40,
)
label = st.sampled_from(["0", "1", "2", "pos", "", "1.0", "-1", "positive"])


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(st.tuples(odd_text, label), min_size=0, max_size=6),
    header=st.sampled_from(["sentence\tlabel", "text\tlabel", "sentence\tstars", "sentence"]),
)
def test_evaluate_data_files(rows, header, tiny_model_dir, tmp_path_factory, capsys):
    d = tmp_path_factory.mktemp("fuzzdata")
    ncols = len(header.split("\t"))
    body = "".join("\t".join([t, y][:ncols]) + "\n" for t, y in rows)
    (d / "dev.tsv").write_text(header + "\n" + body, encoding="utf-8")
    out = d / "out"
    rc = main(
        [
            "evaluate",
            "--model",
            str(tiny_model_dir),
            "--task",
            "sst2",
            "--data",
            str(d),
            "--split",
            "dev",
            "--out",
            str(out),
            "--max-length",
            "24",
        ]
    )
    cap = capsys.readouterr()
    assert rc in (0, 2), cap.err
    if rc == 0:
        assert json.loads((out / "metrics.json").read_text())["n"] == len(rows)
    else:
        errs = [ln for ln in cap.err.splitlines() if ln.startswith("error:")]
        assert len(errs) == 1 and "Traceback" not in cap.err
        assert not out.exists()


scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=2),
)
keys = st.sampled_from(
    [
        "run_dir",
        "seed",
        "teacher",
        "task",
        "train_limit",
        "public_data",
        "allow_overlap",
        "tune",
        "transfer",
        "dp",
        "distill",
        "eval_split",
        "bogus_key",
        "with_teacher_tuning",
    ]
)
sections = st.dictionaries(
    st.sampled_from(
        [
            "n_tokens",
            "lr",
            "epochs",
            "batch_size",
            "alpha",
            "temperature",
            "method",
            "epsilon",
            "delta",
            "max_grad_norm",
            "layers",
            "nope",
        ]
    ),
    scalar,
    max_size=3,
)


@settings(max_examples=150, deadline=None)
@given(cfg=st.dictionaries(keys, st.one_of(scalar, sections), max_size=5))
def test_run_configs_validate_or_name_the_field(cfg):
    from promptport.pipeline import load_run_config, stage_configs

    try:
        stage_configs(load_run_config(None, cfg))
    except BadInput as e:
        assert e.field and str(e).startswith(e.field) and "\n" not in str(e)
    except (
        TypeError,
        ValueError,
    ) as e:  # a value of the wrong type inside a section must also be named
        pytest.fail(f"unnamed error for {cfg}: {type(e).__name__}: {e}")
