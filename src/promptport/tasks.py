"""The task registry: what a task is (template, verbalizer or target, data columns, source).

Two kinds: `classification` (a verbalizer reads label words at the answer position) and `generation`
(the model continues the template with the text of the `target` field; decoding settings and metrics
say how it is generated and scored, see `promptport.generation`).

Built-in tasks live in `tasks/builtin.yaml`; users add their own from a YAML file with the same keys,
without writing Python.
"""

from __future__ import annotations

import difflib
import re
import string
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from promptport.errors import BadInput


class HubSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    name: str | None = None
    splits: dict[str, str] = Field(
        default_factory=lambda: {"train": "train", "validation": "validation", "test": "test"}
    )


GEN_METRICS = ("bleu", "rougeL", "chrf")


class Decoding(BaseModel):
    """How a generation task is decoded: greedy (num_beams 1) by default; the output is cut at the first
    newline (targets are one line)."""

    model_config = ConfigDict(extra="forbid")
    num_beams: int = Field(1, ge=1, le=16)
    max_new_tokens: int = Field(64, ge=1, le=1024)
    length_penalty: float = Field(1.0, ge=-5.0, le=5.0)
    no_repeat_ngram_size: int = Field(0, ge=0, le=10)


class Task(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str
    template: str
    columns: dict[str, list[str]]
    kind: Literal["classification", "generation"] = "classification"
    label_columns: list[str] = Field(
        default_factory=lambda: ["label", "labels", "category", "class", "y"]
    )
    classes: list[str] = Field(default_factory=list)
    verbalizer: dict[str, list[str]] = Field(default_factory=dict)
    label_map: dict[str, str] = Field(default_factory=dict)
    # generation only: the field whose text the model learns to write (its column names in `columns`)
    target: str | None = None
    decoding: Decoding = Field(default_factory=Decoding)
    metrics: list[str] = Field(default_factory=lambda: ["bleu", "rougeL"])
    hub: HubSource | None = None
    embedded: str | None = None

    @property
    def is_generation(self) -> bool:
        return self.kind == "generation"

    @model_validator(mode="after")
    def _check(self) -> Task:
        fields = self.template_fields
        if not fields:
            raise ValueError("template has no {field} placeholder for the input text")
        missing = [f for f in fields if f not in self.columns]
        if missing:
            raise ValueError(f"columns: no column names given for template field(s) {missing}")
        if self.kind == "generation":
            return self._check_generation()
        if self.target is not None:
            raise ValueError("target: only a generation task (kind: generation) has a target")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError("classes: need at least two distinct classes")
        if set(self.verbalizer) != set(self.classes):
            raise ValueError(
                f"verbalizer: must give label words for exactly the classes {self.classes}"
            )
        if any(not words for words in self.verbalizer.values()):
            raise ValueError("verbalizer: every class needs at least one label word")
        bad = {k: v for k, v in self.label_map.items() if v not in self.classes}
        if bad:
            raise ValueError(f"label_map: {bad} maps to unknown classes")
        return self

    def _check_generation(self) -> Task:
        if not self.target:
            raise ValueError("a generation task needs a target field (the text to generate)")
        if self.target in self.template_fields:
            raise ValueError(f"'{self.target}' is both a template field and the target")
        if self.target not in self.columns:
            raise ValueError(f"no column names given in columns for the target '{self.target}'")
        if self.classes or self.verbalizer:
            raise ValueError("a generation task has no classes or verbalizer")
        unknown = [m for m in self.metrics if m not in GEN_METRICS]
        if unknown or not self.metrics:
            raise ValueError(f"unknown metric(s) {unknown} (choose from {list(GEN_METRICS)})")
        return self

    @property
    def template_fields(self) -> list[str]:
        return [f for _, f, _, _ in string.Formatter().parse(self.template) if f]

    def format(self, **fields: str) -> str:
        return self.template.format_map(fields)

    def class_index(self, raw) -> int | None:
        """Map a raw label value from a file or hub to a class index (None if it is not one)."""
        key = str(raw).strip()
        if key in self.label_map:
            return self.classes.index(self.label_map[key])
        if key in self.classes:
            return self.classes.index(key)
        if re.fullmatch(r"\d+", key) and not self.label_map and int(key) < len(self.classes):
            return int(key)
        return None


def _builtin_raw() -> dict:
    text = resources.files("promptport").joinpath("tasks/builtin.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def builtin_tasks() -> dict[str, Task]:
    return {name: Task(name=name, **spec) for name, spec in _builtin_raw().items()}


def task_from_dict(spec: dict, source: str = "task") -> Task:
    try:
        return Task(**spec)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "task"
        raise BadInput(f"{source}:{loc}", err["msg"]) from None
    except TypeError as e:
        raise BadInput(source, str(e)) from None


def load_task_file(path: str | Path) -> Task:
    p = Path(path)
    try:
        spec = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise BadInput(
            "task", f"cannot read task file '{path}': {str(e).splitlines()[0]}"
        ) from None
    if not isinstance(spec, dict):
        raise BadInput("task", f"task file '{path}' must hold a mapping of task keys")
    spec = dict(spec)
    spec.setdefault("name", p.stem)
    return task_from_dict(spec, source=str(path))


def get_task(name_or_path: str | Task) -> Task:
    """A built-in task by name, or a user task from a YAML file."""
    if isinstance(name_or_path, Task):
        return name_or_path
    if name_or_path.endswith((".yaml", ".yml")) or Path(name_or_path).is_file():
        return load_task_file(name_or_path)
    tasks = builtin_tasks()
    if name_or_path in tasks:
        return tasks[name_or_path]
    close = difflib.get_close_matches(name_or_path, list(tasks), n=1)
    hint = (
        f" (did you mean '{close[0]}'?)"
        if close
        else f" (known: {', '.join(sorted(tasks))}, or a task YAML file)"
    )
    raise BadInput("task", f"unknown task '{name_or_path}'{hint}")
