"""The `promptport` command line: a thin layer over the Python API.

Every command accepts `--config FILE` (YAML with the same keys as the options; options given on the
command line win), `--seed` and `--device`. Exit codes: 0 ok, 1 failed, 2 bad input.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import click
from click.core import ParameterSource
from rich.console import Console

from promptport.corpus import EMBEDDED_TEXTS
from promptport.distill import DistillConfig
from promptport.errors import BadInput, PromptportError, unknown_key
from promptport.fileio import read_yaml_mapping
from promptport.options import click_options, option_values
from promptport.privacy import DPConfig
from promptport.serve import ServeConfig
from promptport.transfer import TransferConfig
from promptport.tune import LOOP_ONLY_SETTINGS, TuneConfig


def out() -> Console:
    return Console(file=sys.stdout, highlight=False, soft_wrap=True)


def err() -> Console:
    return Console(file=sys.stderr, highlight=False, soft_wrap=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="promptport")
def app():
    """Private soft-prompt transfer (POST): distil a teacher LLM, tune a soft prompt privately on the
    student, transfer it to the teacher with public data only.

    \b
    Quick start (offline, embedded teacher and data):
      promptport evaluate --task rt_snippets --out runs/eval

    Every command takes --config FILE (YAML, same keys as its options; the command line wins),
    --seed and --device. Exit codes: 0 ok, 1 failed, 2 bad input.
    """


def common(f):
    """--seed, --device, --config on every command, and --config merged into the options."""
    f = click.option(
        "--config",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="YAML file with the same keys as the options (dashes or underscores); "
        "options on the command line win.",
    )(f)
    f = click.option(
        "--device", default="cpu", show_default=True, help="cpu, cuda or auto (CUDA when present)."
    )(f)
    f = click.option(
        "--seed",
        type=int,
        default=0,
        show_default=True,
        help="Random seed; the same seed gives the same result.",
    )(f)

    @functools.wraps(f)
    @click.pass_context
    def wrapper(ctx, **kwargs):
        from promptport.runtime import quiet_libraries

        quiet_libraries()
        return f(**apply_config(ctx, kwargs))

    return wrapper


def model_option(name="--model", default="smollm2-135m-instruct", help_extra=""):
    decls = (name, "-m") if name == "--model" else (name,)
    return click.option(
        *decls,
        default=default,
        show_default=default is not None,
        help="Embedded default 'smollm2-135m-instruct', a local Hugging Face model folder, or a "
        "hub id (needs network)." + help_extra,
    )


task_option = click.option(
    "--task",
    "-t",
    default="rt_snippets",
    show_default=True,
    help="Built-in task name (see `promptport tasks`) or a task YAML file.",
)
data_option = click.option(
    "--data",
    default=None,
    help="Folder with split files (train/dev/test .csv|.tsv|"
    ".jsonl[.gz]), one file, or a hub data set id. Default: the task's own source.",
)
column_options = [
    click.option(
        "--text-column", default=None, help="Text column in your data files (default: the task's)."
    ),
    click.option(
        "--label-column", default=None, help="Label column in your data files (default: label)."
    ),
    click.option(
        "--split-column",
        default=None,
        help="With one data file: the column naming each row's split (train/dev/test). Without "
        "it, one file is split 80/10/10 by a stable text hash, so no split repeats another.",
    ),
]


def options(*opts):
    def deco(f):
        for o in reversed(opts):
            f = o(f)
        return f

    return deco


def apply_config(ctx: click.Context, values: dict) -> dict:
    """Fill options not given on the command line from the --config YAML, refusing unknown keys."""
    path = values.get("config")
    if not path:
        return values
    data = read_yaml_mapping(path)
    params = {p.name: p for p in ctx.command.params if p.name != "config"}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in params:
            raise unknown_key(str(key), params, str(path))
        if ctx.get_parameter_source(name) in (
            ParameterSource.DEFAULT,
            ParameterSource.DEFAULT_MAP,
            None,
        ):
            try:
                values[name] = None if value is None else params[name].type_cast_value(ctx, value)
            except click.BadParameter as e:
                raise BadInput(str(key), e.format_message()) from None
    return values


@app.command("evaluate")
@model_option()
@task_option
@data_option
@click.option(
    "--prompt",
    type=click.Path(path_type=Path),
    default=None,
    help="Prompt artifact directory (or its .safetensors). Default: zero-shot.",
)
@click.option(
    "--split",
    default="validation",
    show_default=True,
    help="train, validation (alias dev) or test.",
)
@click.option("--limit", type=int, default=None, help="Evaluate only the first N examples.")
@click.option(
    "--out",
    "-o",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("runs/evaluate"),
    show_default=True,
    help="Output directory for metrics.json.",
)
@click.option(
    "--batch-size", type=int, default=32, show_default=True, help="Examples per forward pass."
)
@click.option(
    "--max-length",
    type=int,
    default=256,
    show_default=True,
    help="Token limit per input; longer texts lose tokens from the left, the template is kept.",
)
@options(*column_options)
@common
def evaluate_cmd(**opts):
    """Accuracy and macro-F1, zero-shot or with a soft prompt; writes OUT/metrics.json.

    \b
    Examples:
      promptport evaluate --task rt_snippets --out runs/zs          (offline default)
      promptport evaluate --task sst2 --data path/to/sst2 --split dev --prompt runs/tune/prompt
    """
    from promptport.evaluate import evaluate

    r = evaluate(
        opts["model"],
        opts["task"],
        data=opts["data"],
        split=opts["split"],
        prompt=str(opts["prompt"]) if opts["prompt"] else None,
        limit=opts["limit"],
        out=opts["out_dir"],
        batch_size=opts["batch_size"],
        max_length=opts["max_length"],
        seed=opts["seed"],
        device=opts["device"],
        text_column=opts["text_column"],
        label_column=opts["label_column"],
        split_column=opts["split_column"],
        progress=True,
    )
    if r.get("kind") == "generation":
        scores = "  ".join(
            f"{k} {r[k]:.2f} {r[k + '_ci']}" for k in ("bleu", "rougeL", "chrf") if k in r
        )
        out().print(
            f"evaluate: {r['task']}/{r['split']} {scores} (n={r['n']}) -> {opts['out_dir']}"
        )
        return
    out().print(
        f"evaluate: {r['task']}/{r['split']} accuracy {r['accuracy']:.4f} macro-F1 {r['macro_f1']:.4f} "
        f"(n={r['n']}, {r['seconds']:.1f}s, {r['examples_per_s']:.1f} ex/s) -> "
        f"{Path(opts['out_dir']) / 'metrics.json'}"
    )


@app.command("tune")
@model_option()
@task_option
@data_option
@click.option(
    "--out",
    "-o",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("runs/tune"),
    show_default=True,
    help="Output directory: prompt/, metrics.json, metrics.jsonl, checkpoint/.",
)
@click.option("--train-split", default="train", show_default=True, help="Split to train on.")
@click.option(
    "--val-split",
    default="validation",
    show_default=True,
    help="Split for evaluation, early stopping and picking the best prompt; 'none' for no validation "
    "(the last prompt is kept).",
)
@click.option(
    "--test-split",
    default=None,
    help="Also evaluate the final prompt on this split (never used for "
    "selection). Default: no test evaluation.",
)
@click.option(
    "--train-limit", type=int, default=None, help="Train on a random subset of N examples (seeded)."
)
@click.option(
    "--val-limit",
    type=int,
    default=None,
    help="Validate on a random subset of N examples (seeded).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run checkpointed in OUT/checkpoint exactly (same command).",
)
@click_options(TuneConfig)
@click.option(
    "--dp",
    is_flag=True,
    help="Train with DP-SGD (Poisson sampling, per-example clipping, Gaussian noise).",
)
@click_options(DPConfig)
@options(*column_options)
@common
def tune_cmd(**opts):
    """Tune a soft prompt on a frozen model, optionally with DP-SGD; writes OUT/prompt and OUT/metrics.json.

    \b
    Examples:
      promptport tune --task rt_snippets --out runs/tune                       (offline default)
      promptport tune --task sst2 --data path/to/sst2 --train-limit 2000 --out runs/sst2
      promptport tune --task sst2 --data path/to/sst2 --dp --epsilon 8 --delta 1e-5 --out runs/sst2-dp
      promptport tune ... --resume                                            (continue after a crash)
    """
    from promptport.privacy import dp_from_settings
    from promptport.tune import tune

    dp = dp_from_settings(opts["dp"], option_values(DPConfig, opts))
    cfg = TuneConfig(**option_values(TuneConfig, opts), seed=opts["seed"], dp=dp)
    val_split = None if (opts["val_split"] or "").lower() in ("", "none") else opts["val_split"]
    m = tune(
        opts["model"],
        opts["task"],
        data=opts["data"],
        out=opts["out_dir"],
        train_split=opts["train_split"],
        val_split=val_split,
        test_split=opts["test_split"],
        train_limit=opts["train_limit"],
        val_limit=opts["val_limit"],
        cfg=cfg,
        device=opts["device"],
        resume=opts["resume"],
        progress=True,
        text_column=opts["text_column"],
        label_column=opts["label_column"],
        split_column=opts["split_column"],
        echo=lambda s: out().print(s, markup=False),
    )
    parts = [f"train {m['train_accuracy']:.4f}"]
    if m["val_accuracy"] is not None:
        parts.append(f"val {m['val_accuracy']:.4f} (best step {m['best']['step']})")
    if m["test_accuracy"] is not None:
        parts.append(f"test {m['test_accuracy']:.4f}")
    out().print(
        f"tune: {m['task']} accuracy {', '.join(parts)}; {m['steps']} steps, {m['examples_per_s']:.1f} ex/s, "
        f"{m['wall_seconds']:.1f}s -> {Path(opts['out_dir']) / 'prompt'}",
        markup=False,
    )


@app.command("export")
@click.argument("prompt", type=click.Path(path_type=Path))
@click.option(
    "--peft",
    type=click.Path(path_type=Path),
    default=None,
    help="Write a PEFT prompt-tuning adapter folder here.",
)
@click.option(
    "--vllm",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the prompt for vLLM's prompt-embeddings input here (docs/serving.md).",
)
@click.option(
    "--base-model",
    default=None,
    help="The model the export names (default: the prompt's model).",
)
@common
def export_cmd(**opts):
    """Export a prompt as a PEFT adapter (`PeftModel.from_pretrained(model, DIR)`) and/or for vLLM
    (`vllm serve MODEL --enable-prompt-embeds`).

    \b
    Examples:
      promptport export runs/demo/transfer/prompt --peft adapters/sentiment
      promptport export runs/demo/transfer/prompt --vllm exports/sentiment
    """
    from promptport.fileio import check_writable_dir
    from promptport.prompt import export_peft, load_prompt

    if not opts["peft"] and not opts["vllm"]:
        raise BadInput("peft", "give --peft DIR and/or --vllm DIR")
    art = load_prompt(opts["prompt"])
    if opts["peft"]:
        check_writable_dir(opts["peft"], "peft")
        export_peft(art, opts["peft"], opts["base_model"])
        out().print(f"export: {art.n_tokens}-token prompt -> PEFT adapter {opts['peft']}")
    if opts["vllm"]:
        from promptport.serve.vllm import export_vllm

        check_writable_dir(opts["vllm"], "vllm")
        export_vllm(art, opts["vllm"], opts["base_model"])
        out().print(
            f"export: {art.n_tokens}-token prompt -> {opts['vllm']} for vLLM "
            "(prompt_embeds.safetensors, vllm.json; docs/serving.md)"
        )


@app.command("serve")
@click_options(ServeConfig)
@common
def serve_cmd(**opts):
    """Serve transferred prompts over an OpenAI-compatible HTTP API, many tenants on one teacher.

    \b
    Examples:
      promptport serve --registry prompts                      # loopback, one tenant, no keys
      promptport serve --registry prompts --keys keys.yaml --host 0.0.0.0
      curl -s localhost:8000/v1/classify -H 'Authorization: Bearer KEY' \\
           -d '{"model": "sentiment", "input": "a charming film"}'

    Register a prompt: POST /v1/prompts (multipart: id, prompt.safetensors, prompt.json), or copy
    its folder to REGISTRY/tenants/TENANT/ID/ before starting. keys.yaml maps tenant -> key.
    SIGTERM or Ctrl-C answers the requests already accepted, then exits 0.
    """
    from promptport.serve import serve

    cfg = ServeConfig(**option_values(ServeConfig, opts), device=opts["device"])
    serve(cfg, log=lambda s: err().print(s, markup=False))


@app.command("tasks")
def tasks_cmd():
    """List the built-in tasks with their templates and label words."""
    from rich.table import Table

    from promptport.tasks import builtin_tasks

    t = Table(title="built-in tasks (add your own with a YAML file: --task my_task.yaml)")
    for col in ("task", "kind", "template", "label words / target", "source"):
        t.add_column(col)
    for name, task in builtin_tasks().items():
        words = ", ".join(
            f"{c}={'/'.join(w.strip() for w in task.verbalizer[c])}" for c in task.classes
        )
        if task.is_generation:
            words = f"target: {task.target}; metrics: {', '.join(task.metrics)}"
        src = f"embedded:{task.embedded}" if task.embedded else (task.hub.path if task.hub else "-")
        t.add_row(name, task.kind, task.template.replace("\n", "\\n"), words, src)
    out().print(t)


@app.command("transfer")
@click.option(
    "--prompt",
    type=click.Path(path_type=Path),
    required=True,
    multiple=True,
    help="The user's prompt artifact (tuned on the student). Repeat it to transfer several users' "
    "prompts in one job: the models load once and the unprompted public-data logits are shared "
    "(OUT/NN-NAME/ per prompt, OUT/summary.json).",
)
@model_option("--student", default=None, help_extra=" The model the prompt was tuned on.")
@model_option("--teacher", help_extra=" The model to transfer to.")
@click.option(
    "--public-data",
    required=True,
    help="Public text only: "
    + " | ".join(f"embedded:{n}" for n in EMBEDDED_TEXTS)
    + " (rt_reviews: "
    "the critic reviews of the movies kept out of the embedded private task, the offline default's), "
    "a file or folder (labels ignored), or a hub data set id.",
)
@click.option("--public-text-column", default=None, help="Text column of the public data files.")
@click.option(
    "--alpha",
    default="0.5",
    show_default=True,
    help="Weight of the shift term in [0, 1], or 'auto' (from public-data agreement).",
)
@click_options(TransferConfig)
@click.option(
    "--task",
    default=None,
    help="Override the task (default: the template/verbalizer stored in the prompt).",
)
@click.option(
    "--out",
    "-o",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("runs/transfer"),
    show_default=True,
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted transfer from OUT/checkpoint/ (same result "
    "as an uninterrupted run).",
)
@common
def transfer_cmd(**opts):
    """Provider side: transfer a user's prompt from the student to the teacher with public data only.

    \b
    Example:
      promptport transfer --prompt runs/tune/prompt --student runs/distill/student \\
          --teacher smollm2-135m-instruct --public-data embedded:rt_reviews --out runs/transfer
      promptport transfer --prompt alice/prompt --prompt bob/prompt ...   (several users, one job)
      promptport transfer ... --init text --n-tokens auto   (a teacher prompt of the user's length,
                                 10 or 1 tokens: the one with the lowest held-out public loss kept)
    """
    from promptport.transfer import transfer

    if opts["student"] is None:
        raise BadInput("student", "give the model the prompt was tuned on (--student)")
    alpha = opts["alpha"]
    if alpha != "auto":
        try:
            alpha = float(alpha)
        except ValueError:
            raise BadInput(
                "alpha", f"must be a number in [0, 1] or 'auto', got '{alpha}'"
            ) from None
    cfg = TransferConfig(**option_values(TransferConfig, opts), alpha=alpha, seed=opts["seed"])
    if len(opts["prompt"]) > 1:
        from promptport.transfer import transfer_many

        if opts["resume"]:
            raise BadInput(
                "resume", "resume one prompt's transfer at a time (its OUT/NN-NAME directory)"
            )
        m = transfer_many(
            list(opts["prompt"]),
            opts["student"],
            opts["teacher"],
            public_data=opts["public_data"],
            out=opts["out_dir"],
            cfg=cfg,
            task=opts["task"],
            public_text_column=opts["public_text_column"],
            device=opts["device"],
            progress=True,
        )
        shared = sum(r["unprompted_cache_shared"] for r in m["runs"])
        out().print(
            f"transfer: {m['prompts']} prompts, {shared} reused the shared public-data cache "
            f"-> {Path(opts['out_dir']) / 'summary.json'}"
        )
        return
    r = transfer(
        opts["prompt"][0],
        opts["student"],
        opts["teacher"],
        public_data=opts["public_data"],
        out=opts["out_dir"],
        cfg=cfg,
        task=opts["task"],
        public_text_column=opts["public_text_column"],
        device=opts["device"],
        progress=True,
        resume=opts["resume"],
    )
    best = r["best"] or {}
    out().print(
        f"transfer: {r['method']} alpha={r['alpha']:.3f} on {r['n_public']} public examples, {r['steps']} "
        f"steps, held-out loss {r['initial_heldout_loss'] or 0:.4f} -> {best.get('heldout_loss', 0):.4f} "
        f"({r['wall_seconds']:.0f}s) -> {Path(opts['out_dir']) / 'prompt'}"
    )
    if sel := r.get("teacher_tokens_selection"):
        tried = ", ".join(
            f"{c['n_tokens']}: {c['best']['heldout_loss']:.4f}" for c in sel["candidates"]
        )
        out().print(f"  teacher prompt length {sel['n_tokens']} kept (held-out loss {tried})")


run_config_option = click.option(
    "--config",
    "run_config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Run YAML (see configs/). Default: the embedded offline default (configs/default.yaml).",
)


@app.command("run")
@run_config_option
@click.option("--run-dir", default=None, help="Override the config's run_dir.")
@click.option("--seed", type=int, default=None, help="Override the config's seed.")
@click.option("--device", default=None, help="Override the config's device (cpu, cuda, auto).")
@click.option(
    "--with-teacher-tuning",
    is_flag=True,
    default=None,
    help="Also tune a prompt directly on the teacher with the private data (the expensive, non-private "
    "reference POST avoids) and report its cost.",
)
def run_cmd(run_config, run_dir, seed, device, with_teacher_tuning):
    """The whole pipeline: distil -> tune [DP] -> transfer -> evaluate -> report, one sub-directory per stage.

    Stages already complete (same config and inputs, verified checksums) are reused. With no --config
    it runs the embedded default offline: SmolLM2-135M teacher, 4-layer student, Rotten Tomatoes
    snippets as the private task, reviews of other movies (labels discarded) as public data.

    \b
    Examples:
      promptport run                                   (embedded default, ~30 min on 2 cores)
      promptport run --config configs/sst2-smollm2.yaml --run-dir runs/sst2
    """
    from promptport.pipeline import DEFAULT_CONFIG, load_run_config, run_pipeline
    from promptport.runtime import quiet_libraries

    quiet_libraries()
    cfg = load_run_config(
        run_config or DEFAULT_CONFIG,
        {
            "run_dir": run_dir,
            "seed": seed,
            "device": device,
            "with_teacher_tuning": with_teacher_tuning,
        },
    )
    r = run_pipeline(cfg, log=lambda m: err().print(m, markup=False))
    out().print(f"run: {r['summary']} -> {Path(cfg.run_dir) / 'report.html'}")


@app.command("report")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def report_cmd(run_dir):
    """Rebuild RUN_DIR/report.md and RUN_DIR/report.html from the run's files."""
    from promptport.report import build_report

    if not (run_dir / "results.json").is_file():
        raise BadInput("run_dir", f"{run_dir} has no results.json (not a finished run)")
    md, page = build_report(run_dir)
    out().print(f"report: {md} and {page}")


@app.command("sweep-alpha")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--alphas",
    default="0,0.25,0.5,0.75,1",
    show_default=True,
    help="Comma-separated values in [0, 1].",
)
def sweep_alpha_cmd(run_dir, alphas):
    """Transfer a finished run's prompt with several alphas and add the accuracy curve to its report.

    The curve is reported, not used to choose alpha (that would select on the private test split).
    """
    from promptport.pipeline import sweep_alpha
    from promptport.runtime import quiet_libraries

    quiet_libraries()
    try:
        values = [float(a) for a in alphas.split(",") if a.strip()]
    except ValueError:
        raise BadInput("alphas", f"must be comma-separated numbers, got '{alphas}'") from None
    r = sweep_alpha(run_dir, values, log=lambda m: err().print(m, markup=False))
    best = max(r["results"], key=lambda x: x["accuracy"])
    out().print(
        f"sweep-alpha: {len(values)} transfers; highest accuracy {best['accuracy']:.4f} at alpha "
        f"{best['alpha']:g} -> {run_dir / 'sweep-alpha' / 'results.json'}"
    )


@app.command("distill")
@model_option("--teacher", help_extra=" The model to distil.")
@click.option(
    "--student",
    default=None,
    help="Continue from an existing student folder (same teacher tokenizer) instead of a fresh cut.",
)
@click_options(DistillConfig)
@click.option(
    "--resume", is_flag=True, help="Continue an interrupted run from OUT/checkpoint (exactly)."
)
@click.option(
    "--time-budget",
    type=float,
    default=None,
    help="Stop (and save the student) after this many seconds.",
)
@click.option(
    "--out",
    "-o",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("runs/distill"),
    show_default=True,
    help="Output: OUT/student, OUT/metrics.json, OUT/metrics.jsonl, OUT/checkpoint.",
)
@common
def distill_cmd(**opts):
    """Distil the teacher into a small student (same width and tokenizer, fewer layers).

    The teacher's outputs are cached once; the student then trains from the cache for several epochs.
    Runs on several processes under `accelerate launch` (DDP) unchanged.

    With no task options it builds the general student (one for every user's task): the task and
    label terms over a mixture of templates and label words, on the --corpus texts.

    \b
    Examples:
      promptport distill --layers 8 --out runs/distill              (general student, offline)
      promptport distill --layers 4 --corpus imdb/train.jsonl.gz \\
          --task-template sst2 --task-data imdb/train.jsonl.gz --out runs/distill-task  (one task)
      promptport distill --alpha-task 0 --alpha-label 0 --out runs/distill-lm  (plain LM distillation)
      promptport distill --student runs/distill/student --max-steps 150 --out runs/distill-more
      accelerate launch --multi_gpu --num_processes 2 -m promptport.cli distill --out runs/ddp
    """
    from promptport.distill import distill

    cfg = DistillConfig(**option_values(DistillConfig, opts), seed=opts["seed"])
    r = distill(
        opts["teacher"],
        opts["out_dir"],
        cfg,
        student=opts["student"],
        resume=opts["resume"],
        device=opts["device"],
        progress=True,
        time_budget_s=opts["time_budget"],
    )
    if r.get("rank", 0) != 0 or "after" not in r:
        return
    b, a, pc = r["before"] or {}, r["after"] or {}, r["parameters"]
    kl = (
        f"KL {b.get('kl_per_token', float('nan')):.3g} -> {a.get('kl_per_token', float('nan')):.3g}, "
        if "kl_per_token" in a
        else ""
    )
    out().print(
        f"distill: {len(r['layers'])}-layer student (layers {r['layers']}), {kl}"
        f"own params {pc['own'] / 1e6:.1f}M ({pc['own_ratio_to_teacher']:.1%} of the teacher), "
        f"{r['tokens_trained']} tokens in {r['wall_seconds']:.0f}s -> {r['student']}"
    )


@app.command("plan")
@run_config_option
@click.option(
    "--teacher",
    default=None,
    help="Override the config's teacher (a model folder, hub id or the default).",
)
@click.option(
    "--layers", type=int, default=None, help="Override the student depth (default: the config's)."
)
@click.option(
    "--device", default=None, help="Plan for this device (cpu, cuda, auto); default: the config's."
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan_cmd(run_config, teacher, layers, device, as_json):
    """Parameters and expected peak memory of each stage of a run, from the model configs only.

    Reads config.json files (no weights are loaded or downloaded) and warns when the teacher or a stage
    will not fit the free memory of the device. Exit code 0 even with warnings.

    \b
    Examples:
      promptport plan                                        (the embedded default run)
      promptport plan --config configs/sst2-gpt2xl.yaml --device cuda
      promptport plan --config configs/sst2-llama2-7b.yaml --teacher path/to/llama2-config-folder
    """
    from promptport.pipeline import DEFAULT_CONFIG
    from promptport.plan import estimate_run, format_plan, plan_json
    from promptport.runtime import quiet_libraries

    quiet_libraries()
    p = estimate_run(run_config or DEFAULT_CONFIG, device=device, teacher=teacher, layers=layers)
    out().print(plan_json(p) if as_json else format_plan(p), markup=False, soft_wrap=True)


@app.command("audit")
@model_option(help_extra=" The model the audited prompts are tuned on (normally the student).")
@task_option
@data_option
@click.option(
    "--out",
    "-o",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("runs/audit"),
    show_default=True,
    help="Audit directory: audit.json, masks, shadows/, report/.",
)
@click.option(
    "--shadows",
    "n_shadows",
    type=int,
    default=16,
    show_default=True,
    help="Number of shadow prompts; each pool example is IN for half of them.",
)
@click.option(
    "--pool-size",
    type=int,
    default=500,
    show_default=True,
    help="Audit pool: N examples drawn (seeded) from --split.",
)
@click.option(
    "--split", default="train", show_default=True, help="Split the audit pool is drawn from."
)
@click.option(
    "--shadow-ids",
    default=None,
    help="Train only these shadows, e.g. 0-7 or 0,3,8-9 (spread one audit over processes or machines "
    "sharing OUT). Default: all.",
)
@click.option(
    "--resume", is_flag=True, help="Keep finished shadows in OUT and train only the missing ones."
)
@click.option(
    "--report-only",
    is_flag=True,
    help="Train nothing; score the finished shadows of OUT (at least 3) and write the report.",
)
@click.option(
    "--like",
    "like_prompt",
    type=click.Path(path_type=Path),
    default=None,
    help="Audit the configuration of this prompt artifact: its tuning settings (prompt.json) replace "
    "the tuning options below unless they are given on the command line.",
)
@click.option(
    "--n-boot",
    type=int,
    default=1000,
    show_default=True,
    help="Bootstrap resamples for the intervals.",
)
@click.option(
    "--audit-delta",
    type=float,
    default=None,
    help="delta for the 95% empirical epsilon lower bound (default: the DP delta, else 1e-5).",
)
@click_options(TuneConfig, help_prefix="Tuning: ", exclude=LOOP_ONLY_SETTINGS)
@click.option("--dp", is_flag=True, help="Audit DP-SGD training (needs --epsilon).")
@click_options(DPConfig, help_prefix="Shadows' ")
@click.option(
    "--dtype",
    default="float32",
    show_default=True,
    help="Model weights dtype: float32 or bfloat16.",
)
@options(*column_options)
@common
def audit_cmd(**opts):
    """LiRA membership-inference audit: how much does a prompt tuned this way leak about its training data?

    Trains N shadow prompts, each on a random half of an audit pool with exactly the given tuning
    configuration (DP or not), keeps every pool example's logits under every shadow, then attacks each
    shadow in turn with the others as references (online and offline LiRA, global threshold). Writes
    OUT/report/report.json (AUC, balanced accuracy, TPR at 0.1% and 1% FPR with bootstrap intervals,
    theoretical vs. empirical epsilon), roc.png, roc.csv and scores.csv.

    \b
    Examples:
      promptport audit --model runs/distill/student --task sst2 --data path/to/sst2 --shadows 16 \\
          --epochs 2 --out runs/audit
      promptport audit ... --dp --epsilon 8 --out runs/audit-dp8
      promptport audit ... --shadow-ids 0-7 --out shared/audit     (one machine; 8-15 on another)
      promptport audit --out runs/audit --resume                    (continue; settings come from OUT)
      promptport audit --out runs/audit --report-only
    """
    from promptport.audit import (
        AuditSpec,
        audit,
        audit_report,
        format_summary,
        read_spec,
        tune_settings,
    )

    ctx = click.get_current_context()
    defaults = {p.name: p.get_default(ctx) for p in ctx.command.params}
    given = {
        k
        for k in opts
        if ctx.get_parameter_source(k) not in (ParameterSource.DEFAULT, None)
        or opts[k] != defaults.get(k)
    }  # the second: values from --config
    spec_file = Path(opts["out_dir"]) / "audit.json"
    if opts["report_only"]:
        s = audit_report(
            opts["out_dir"], n_boot=opts["n_boot"], delta=opts["audit_delta"], seed=opts["seed"]
        )
        out().print(format_summary(s) + f" -> {Path(opts['out_dir']) / 'report'}", markup=False)
        return
    if opts["resume"] and spec_file.is_file() and not given & set(_AUDIT_SPEC_OPTIONS):
        spec = read_spec(opts["out_dir"])  # `audit --out DIR --resume`: the settings live in DIR
    else:
        tune = tune_settings(opts, given, like=opts["like_prompt"])
        spec = AuditSpec(
            model=opts["model"],
            task=opts["task"],
            data=opts["data"],
            split=opts["split"],
            pool_size=opts["pool_size"],
            n_shadows=opts["n_shadows"],
            seed=opts["seed"],
            dtype=opts["dtype"],
            text_column=opts["text_column"],
            label_column=opts["label_column"],
            split_column=opts["split_column"],
            tune=tune,
        )
    r = audit(
        opts["out_dir"],
        spec,
        shadow_ids=opts["shadow_ids"],
        resume=opts["resume"],
        n_boot=opts["n_boot"],
        delta=opts["audit_delta"],
        device=opts["device"],
        progress=True,
    )
    if r["summary"] is None:
        out().print(
            f"audit: trained {len(r['trained'])} shadow(s) ({len(r['skipped'])} already done); "
            f"{len(r['finished'])}/{r['n_shadows']} finished in {opts['out_dir']} -- the report is written "
            "when all are (or use --report-only)",
            markup=False,
        )
        return
    out().print(
        format_summary(r["summary"]) + f" -> {Path(opts['out_dir']) / 'report'}", markup=False
    )


_AUDIT_SPEC_OPTIONS = (
    "model",
    "seed",
    "task",
    "data",
    "pool_size",
    "n_shadows",
    "split",
    "like_prompt",
    "n_tokens",
    "init",
    "init_text",
    "optimizer",
    "lr",
    "weight_decay",
    "schedule",
    "warmup_steps",
    "epochs",
    "max_steps",
    "batch_size",
    "grad_accum",
    "max_length",
    "eval_batch_size",
    "dp",
    "epsilon",
    "delta",
    "max_grad_norm",
    "accountant",
    "dtype",
    "text_column",
    "label_column",
    "split_column",
)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one-line errors, exit 2 for bad input, no tracebacks unless PROMPTPORT_DEBUG=1."""
    debug = os.environ.get("PROMPTPORT_DEBUG") == "1"
    try:
        rv = app.main(args=argv, prog_name="promptport", standalone_mode=False)
        return int(rv or 0) if isinstance(rv, int) else 0
    except click.exceptions.UsageError as e:
        err().print(f"error: {e.format_message()}", highlight=False, markup=False)
        if e.ctx is not None:
            err().print(f"(see `{e.ctx.command_path} --help`)", highlight=False, markup=False)
        return 2
    except click.exceptions.Abort:
        err().print("aborted", highlight=False)
        return 130
    except click.exceptions.Exit as e:
        return e.exit_code
    except PromptportError as e:
        if debug:
            raise
        err().print(f"error: {e}", highlight=False, markup=False, soft_wrap=True)
        return e.exit_code
    except KeyboardInterrupt:
        err().print("interrupted", highlight=False)
        return 130
    except Exception as e:
        if debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        err().print(
            f"error: unexpected {type(e).__name__}: {msg} (PROMPTPORT_DEBUG=1 shows the traceback)",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        return 1


def entry() -> None:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
