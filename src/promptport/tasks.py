"""The task registry: what a classification task is (template, verbalizer, data columns, source).

Built-in tasks live in `tasks/builtin.yaml`; users add their own from a YAML file with the same keys,
without writing Python.
"""

from __future__ import annotations

import difflib
import re
import string
from importlib import resources
from pathlib import Path

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


class Task(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str
    template: str
    columns: dict[str, list[str]]
    label_columns: list[str] = Field(
        default_factory=lambda: ["label", "labels", "category", "class", "y"]
    )
    classes: list[str]
    verbalizer: dict[str, list[str]]
    label_map: dict[str, str] = Field(default_factory=dict)
    hub: HubSource | None = None
    embedded: str | None = None

    @model_validator(mode="after")
    def _check(self) -> Task:
        fields = self.template_fields
        if not fields:
            raise ValueError("template has no {field} placeholder for the input text")
        missing = [f for f in fields if f not in self.columns]
        if missing:
            raise ValueError(f"columns: no column names given for template field(s) {missing}")
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
