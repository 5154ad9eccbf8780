import gzip
import json

import pytest

from promptport.data import check_disjoint_splits, load_embedded_text, load_split
from promptport.errors import BadInput
from promptport.tasks import builtin_tasks, get_task


def test_builtin_tasks_are_valid():
    tasks = builtin_tasks()
    for name in [
        "sst2",
        "imdb",
        "rotten_tomatoes",
        "agnews",
        "tweet_eval",
        "mpqa",
        "arisetv",
        "dbpedia",
        "financial_phrasebank",
        "snli",
        "boolq",
        "rt_snippets",
    ]:
        assert name in tasks
        t = tasks[name]
        assert t.template_fields and set(t.verbalizer) == set(t.classes)


def test_unknown_task_suggests_closest():
    with pytest.raises(BadInput, match="did you mean 'sst2'"):
        get_task("sst3")


def test_user_task_from_yaml(tmp_path):
    f = tmp_path / "spam.yaml"
    f.write_text(
        'description: Is the mail spam?\ntemplate: "Mail: {text}\\nSpam:"\n'
        "columns: {text: [body]}\nclasses: [ham, spam]\nverbalizer: {ham: [' no'], spam: [' yes']}\n"
    )
    t = get_task(str(f))
    assert t.name == "spam" and t.format(text="hi") == "Mail: hi\nSpam:"


def test_user_task_bad_field_is_named(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(
        'description: x\ntemplate: "{text}:"\ncolumns: {text: [t]}\nclasses: [a, b]\n'
        "verbalizer: {a: [' a']}\n"
    )
    with pytest.raises(BadInput, match="verbalizer"):
        get_task(str(f))


def test_folder_split_files_and_dev_alias(sst_like_dir):
    t = get_task("sst2")
    dev = load_split(t, str(sst_like_dir), "validation")
    assert len(dev) == 8 and dev.labels[:2] == [1, 0]
    assert len(load_split(t, str(sst_like_dir), "dev")) == 8
    assert len(load_split(t, str(sst_like_dir), "train", limit=3)) == 3


def test_jsonl_gz_and_csv(tmp_path):
    t = get_task("imdb")
    p = tmp_path / "train.jsonl.gz"
    with gzip.open(p, "wt") as f:
        for i in range(5):
            f.write(json.dumps({"text": f"review {i}", "label": i % 2}) + "\n")
    ds = load_split(t, str(p), "all")
    assert ds.fields["text"][3] == "review 3" and ds.labels == [0, 1, 0, 1, 0]
    c = tmp_path / "my.csv"
    c.write_text('body,sentiment\n"great, really",pos\nawful,neg\n')
    ds = load_split(t, str(c), "all", text_column="body", label_column="sentiment")
    assert ds.fields["text"] == ["great, really", "awful"] and ds.labels == [1, 0]


def _one_file(tmp_path, n=200, extra=""):
    p = tmp_path / "all.tsv"
    rows = "".join(f"review number {i}\t{i % 2}{extra.format(i=i)}\n" for i in range(n))
    p.write_text("sentence\tlabel" + ("\tsplit" if extra else "") + "\n" + rows)
    return p


def test_one_file_never_serves_two_splits(tmp_path):
    """The review's critical defect: --data file.tsv returned the same rows for every split."""
    t = get_task("sst2")
    p = _one_file(tmp_path)
    parts = {s: load_split(t, str(p), s) for s in ("train", "validation", "test")}
    texts = {s: set(d.fields["text"]) for s, d in parts.items()}
    assert not (texts["train"] & texts["validation"]) and not (texts["train"] & texts["test"])
    assert not (texts["validation"] & texts["test"])
    assert sum(len(x) for x in texts.values()) == 200 and 140 < len(texts["train"]) < 180
    assert "text hash" in parts["train"].meta["split_rule"]
    again = load_split(t, str(p), "validation")  # stable across calls
    assert again.fields == parts["validation"].fields
    assert len(load_split(t, str(p), "all")) == 200


def test_split_column_and_aliasing_refused(tmp_path):
    t = get_task("sst2")
    p = _one_file(tmp_path, 30, extra="\t{i}")  # placeholder column, rewritten below
    lines = p.read_text().splitlines()
    names = ["train", "dev", "test"]
    p.write_text(
        "\n".join(
            [lines[0]]
            + [ln.rsplit("\t", 1)[0] + "\t" + names[i % 3] for i, ln in enumerate(lines[1:])]
        )
        + "\n"
    )
    dev = load_split(t, str(p), "validation", split_column="split")
    assert len(dev) == 10 and all(int(x.split()[-1]) % 3 == 1 for x in dev.fields["text"])
    with pytest.raises(BadInput, match="split_column"):
        load_split(t, str(p), "train", split_column="nope")
    # a validation split with the training content is refused, whatever its name or file
    train = load_split(t, str(p), "train", split_column="split")
    copy = tmp_path / "copy"
    copy.mkdir()
    rows = "".join(f"{a}\t{b}\n" for a, b in zip(train.fields["text"], train.labels))
    (copy / "train.tsv").write_text("sentence\tlabel\n" + rows)
    (copy / "dev.tsv").write_text("sentence\tlabel\n" + rows)
    tr, dv = load_split(t, str(copy), "train"), load_split(t, str(copy), "dev")
    with pytest.raises(BadInput, match="val_split"):
        check_disjoint_splits(tr, val_split=dv)
    check_disjoint_splits(train, val_split=dev)  # disjoint: accepted


def test_tune_refuses_a_validation_split_that_is_the_training_data(tmp_path, tiny_model_dir):
    from promptport.tune import TuneConfig, tune

    d = tmp_path / "d"
    d.mkdir()
    rows = "".join(f"text {i}\t{i % 2}\n" for i in range(12))
    for name in ("train.tsv", "dev.tsv"):
        (d / name).write_text("sentence\tlabel\n" + rows)
    with pytest.raises(BadInput, match="val_split"):
        tune(str(tiny_model_dir), "sst2", data=str(d), out=tmp_path / "o", cfg=TuneConfig(epochs=1))


def test_missing_column_is_named(tmp_path):
    c = tmp_path / "dev.csv"
    c.write_text("body,label\nhello,1\n")
    with pytest.raises(BadInput, match="no 'text' column"):
        load_split(get_task("sst2"), str(tmp_path), "dev")


def test_label_outside_verbalizer(tmp_path):
    c = tmp_path / "dev.tsv"
    c.write_text("sentence\tlabel\nfine\t1\nodd\t7\n")
    with pytest.raises(BadInput, match=r"dev.tsv:3: label '7'"):
        load_split(get_task("sst2"), str(tmp_path), "dev")


def test_empty_dataset(tmp_path):
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\n")
    with pytest.raises(BadInput, match="no examples"):
        load_split(get_task("sst2"), str(tmp_path), "dev")


def test_missing_split_file(sst_like_dir):
    with pytest.raises(BadInput, match="no file for split 'test'"):
        load_split(get_task("sst2"), str(sst_like_dir), "test")


def test_embedded_default_splits_are_disjoint_and_offline():
    t = get_task("rt_snippets")
    parts = {s: load_split(t, None, s) for s in ("train", "validation", "test")}
    sets = {s: set(d.fields["text"]) for s, d in parts.items()}
    assert len(parts["train"]) > 7000 and 800 < len(parts["validation"]) < 1200
    assert not sets["train"] & sets["validation"] and not sets["train"] & sets["test"]
    assert set(parts["train"].labels) == {0, 1}
    plots = load_embedded_text("rt_plots")
    assert len(plots) > 1000 and not set(plots) & sets["train"]
    assert len(load_embedded_text("headlines", limit=10)) == 10
    # public reviews: other movies than the private snippets, no shared text
    reviews = load_embedded_text("rt_reviews")
    assert len(reviews) > 3000
    private = set().union(*sets.values())
    assert not set(reviews) & private


def test_labelled_public_reviews_choose_steps_offline_and_are_not_private():
    """`select_data: embedded:rt_reviews` is the public movies' reviews with their own labels: every
    text is a public review (none a private snippet), each label the corpus's fresh/rotten, drawn
    with the seed; a task without those classes or an unknown name is refused naming the setting."""
    from promptport.data import _rt_rows
    from promptport.transfer_select import load_select_data

    t = get_task("rt_snippets")
    sel = load_select_data(t, "embedded:rt_reviews", 500, 0)
    texts = sel.fields["text"]
    assert len(sel) == 500 and len(set(texts)) == 500 and sel.meta["of"] > 3000
    assert set(texts) <= set(load_embedded_text("rt_reviews"))
    private = set()
    for s in ("train", "validation", "test"):
        private |= set(load_split(t, None, s).fields["text"])
    assert not set(texts) & private
    category = {r["text"].strip(): r["category"] for r in _rt_rows()}
    assert [t.classes[y] for y in sel.labels] == [
        t.label_map[category[x]] for x in texts
    ]  # fresh -> positive, rotten -> negative: the corpus's own labels
    assert 0.4 < sum(sel.labels) / len(sel) < 0.8  # both classes, the corpus's mix
    again = load_select_data(t, "embedded:rt_reviews", 500, 0)
    assert again.fields == sel.fields and again.meta["fingerprint"] == sel.meta["fingerprint"]
    assert load_select_data(t, "embedded:rt_reviews", 500, 1).fields != sel.fields
    with pytest.raises(BadInput, match="select_data: embedded:rt_reviews is labelled"):
        load_select_data(get_task("sst2"), "embedded:rt_reviews", 10, 0)
    with pytest.raises(BadInput, match="select_data: no labelled embedded source 'plots'"):
        load_select_data(t, "embedded:plots", 10, 0)


def test_public_reviews_are_about_other_movies():
    from promptport.data import _rt_rows, is_public_movie

    rows = [r for r in _rt_rows() if r["category"] != "plot"]
    public_movies = {r["movie_name"] for r in rows if is_public_movie(r["movie_name"])}
    private_movies = {r["movie_name"] for r in rows} - public_movies
    assert 100 < len(public_movies) < 250 and len(private_movies) > 300
    t = get_task("rt_snippets")
    private_texts = set()
    for s in ("train", "validation", "test"):
        private_texts |= set(load_split(t, None, s).fields["text"])
    by_text = {r["text"].strip(): r["movie_name"] for r in rows}
    assert all(by_text[x] in private_movies for x in private_texts)
