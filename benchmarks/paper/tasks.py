"""The five private tasks as split files, and their public data (provider side)."""

from __future__ import annotations

import gzip
import hashlib
import json
import statistics
from pathlib import Path

from benchmarks.common import SHARED
from benchmarks.paper.recipes import Sizes
from promptport.data import normalize_text
from promptport.fileio import write_text


def _bucket(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def _lines(path: Path) -> list[str]:
    op = gzip.open if path.suffix == ".gz" else open
    with op(path, "rt", encoding="utf-8", errors="replace") as f:
        return [line.rstrip("\n") for line in f]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


ARISETV_TASK = {
    "name": "arisetv6",
    "description": "Classify the topic of the news as business, entertainment, health, politics, "
    "sports or technology.",
    "template": "News: {text}\nTopic:",
    "columns": {"text": ["text"]},
    "classes": ["business", "entertainment", "health", "politics", "sports", "technology"],
    "verbalizer": {
        c: [" " + c]
        for c in ["business", "entertainment", "health", "politics", "sports", "technology"]
    },
    "label_map": {"tech": "technology"},
}


def prepare_task(name: str, data_dir: Path, shared: Path = SHARED) -> dict:
    """Write STATE/data/<task>/{train,validation,test,public}.jsonl (text, label) once; returns the spec
    (task name or task file, data folder, public file). Public texts equal to a private one are dropped."""
    out = data_dir / name
    spec = {
        "task": name if name != "arisetv" else str(out / "task.json"),
        "data": str(out),
        "public": str(out / "public.jsonl"),
    }
    if (out / "done").is_file():
        return spec
    from promptport.data import load_split
    from promptport.tasks import get_task

    def rows_of(ds) -> list[dict]:
        task = get_task(spec["task"]) if name != "arisetv" else None
        field = next(iter(ds.fields))
        return [
            {"text": t, "label": (task.classes[y] if task else y)}
            for t, y in zip(ds.fields[field], ds.labels)
        ]

    splits: dict[str, list[dict]] = {}
    public: list[str] = []
    if name == "sst2":
        t = get_task("sst2")
        splits = {
            s: rows_of(load_split(t, str(shared / "sst2"), s))
            for s in ("train", "validation", "test")
        }
        public = [
            json.loads(line)["text"] for line in _lines(shared / "imdb" / "train.jsonl.gz")[:5000]
        ]
    elif name == "imdb":
        t = get_task("imdb")
        train = rows_of(load_split(t, str(shared / "imdb"), "train"))
        splits = {
            "train": [r for r in train if _bucket(r["text"]) >= 0.04],
            "validation": [r for r in train if _bucket(r["text"]) < 0.04],
            "test": rows_of(load_split(t, str(shared / "imdb"), "test")),
        }
        public = [
            line
            for f in ("rt-polarity.pos", "rt-polarity.neg")
            for line in _lines(shared / "rotten_tomatoes" / f)
        ]
    elif name == "tweet_eval":
        d = shared / "tweet_eval" / "sentiment"
        cls = ["negative", "neutral", "positive"]
        val = [
            {"text": x, "label": cls[int(y)]}
            for x, y in zip(_lines(d / "val_text.txt"), _lines(d / "val_labels.txt"))
            if y.strip()
        ]
        pool = [
            {"text": x, "label": cls[int(y)]}
            for x, y in zip(_lines(d / "test_text.txt.gz"), _lines(d / "test_labels.txt"))
            if y.strip()
        ]
        splits = {
            "train": [r for r in pool if _bucket(r["text"]) < 0.85],
            "validation": val,
            "test": [r for r in pool if _bucket(r["text"]) >= 0.85],
        }
        public = _lines(shared / "tweet_eval" / "emotion" / "train_text.txt")
    elif name == "arisetv":
        import csv

        def read(f):
            with open(shared / "arisetv" / f, newline="", encoding="utf-8") as fh:
                return [
                    {"text": f"{r['Title']}. {r['Excerpt']}", "label": r["Category"]}
                    for r in csv.DictReader(fh)
                ]

        train = read("train.csv")
        splits = {
            "train": [r for r in train if _bucket(r["text"]) >= 0.1],
            "validation": [r for r in train if _bucket(r["text"]) < 0.1],
            "test": read("test.csv"),
        }
        import csv as _csv

        with gzip.open(shared / "ag_news" / "train_subset_5k.csv.gz", "rt") as fh:
            public = [row[0] for row in _csv.reader(fh) if row]
        out.mkdir(parents=True, exist_ok=True)
        (out / "task.json").write_text(json.dumps(ARISETV_TASK, indent=1))
    elif name == "mpqa":
        rows = [
            {"text": x.strip(), "label": lab}
            for f, lab in (("mpqa.neg", "negative"), ("mpqa.pos", "positive"))
            for x in _lines(shared / "mpqa" / f)
            if x.strip()
        ]
        splits = {
            "train": [r for r in rows if _bucket(r["text"]) < 0.8],
            "validation": [r for r in rows if 0.8 <= _bucket(r["text"]) < 0.9],
            "test": [r for r in rows if _bucket(r["text"]) >= 0.9],
        }
        public = [line.split("\t", 1)[1] for line in _lines(shared / "sst5" / "train.tsv")]
    else:
        raise SystemExit(f"unknown task {name}")
    private = {normalize_text(r["text"]) for rows in splits.values() for r in rows}
    public = [p.strip() for p in public if p.strip()]
    public = [p for p in dict.fromkeys(public) if normalize_text(p) not in private]
    for s, rows in splits.items():  # in hash order: any prefix (a --limit) is a mixed sample
        _write_jsonl(out / f"{s}.jsonl", sorted(rows, key=lambda r: _bucket("order:" + r["text"])))
    _write_jsonl(out / "public.jsonl", [{"text": p} for p in public])
    (out / "done").write_text("ok\n")
    return spec


def read_texts(path: Path) -> list[str]:
    return [json.loads(x)["text"] for x in _lines(path) if x.strip()]


def _public_pool(
    out: Path,
    candidates: list[str],
    data: Path,
    train: list[str],
    sizes: Sizes,
    cap: int,
    what: str,
):
    """Write `out` (once) with the candidates in order, each once, none equal to a text the user
    trains on (the first `train_limit` of `train`, the split's texts) or to a validation or test
    text; at most `cap`, at least `n_public` (else an error naming `what`)."""
    held = (
        train[: sizes.train_limit]
        + read_texts(data / "validation.jsonl")
        + read_texts(data / "test.jsonl")
    )
    private = {normalize_text(t) for t in held}
    pool = [t for t in dict.fromkeys(candidates) if normalize_text(t) not in private][:cap]
    if len(pool) < sizes.n_public:
        raise SystemExit(
            f"{data}: {len(pool)} {what}, fewer than n_public={sizes.n_public}: no such public data"
        )
    _write_jsonl(out, [{"text": t} for t in pool])
    return str(out)


def length_matched_public(spec: dict, sizes: Sizes, cap: int = 5000, cut: str = "sentences") -> str:
    """The `length_matched` public data: the table's own public texts (`same_domain`) cut into
    sentences and packed, in order, into pieces of about the user's text length (the tool's
    `public_chars`, `promptport.transfer_common.recut_texts`), so that only their shape changes:
    IMDB reviews become one or two sentences for SST-2, Rotten Tomatoes one-liners paragraphs for
    IMDB. The length is the median character count of the user's training texts, capped at what
    `max_length` tokens hold (about 4 characters a token): one number a user would disclose, no text
    of theirs. Pieces equal to a private text are dropped; written once. `cut`: the tool's
    `public_cut` (phrases: long sentences split into word runs; its own file)."""
    from promptport.transfer_common import recut_texts

    data = Path(spec["data"])
    train = read_texts(data / "train.jsonl")
    median = statistics.median(len(t) for t in train[: sizes.train_limit])
    target = min(int(median), 4 * sizes.max_length)
    out = data / (
        f"public-length{target}.jsonl" if cut == "sentences" else f"public-{cut}{target}.jsonl"
    )
    if out.is_file():
        return str(out)
    pieces = recut_texts(read_texts(Path(spec["public"])), target, cut)
    what = f"public pieces of {target} characters"
    return _public_pool(out, pieces, data, train, sizes, cap, what)


def same_task_public(spec: dict, sizes: Sizes, cap: int = 5000) -> str:
    """The `same_task` public data: the task's own training texts past the first `train_limit` (the
    table's user never holds them), labels dropped, any text also in the user's training rows or the
    validation or test split removed; written once next to the split files. The upper reference for
    public data: the provider holds unlabeled text of the very distribution the user's data comes from."""
    data = Path(spec["data"])
    out = data / f"public-same-task-after{sizes.train_limit}.jsonl"
    if out.is_file():
        return str(out)
    train = read_texts(data / "train.jsonl")
    what = f"training texts past the first {sizes.train_limit}"
    return _public_pool(out, train[sizes.train_limit :], data, train, sizes, cap, what)
