"""The run report: report.md and a self-contained report.html (tables, privacy statement, costs, plots).

Everything is rebuilt from the run directory's files (`promptport report RUN_DIR`), so a report can be
regenerated at any time and never holds anything the run directory does not.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from promptport.fileio import read_json, write_text

BASELINE_LABELS = {
    "teacher_zero_shot": "Teacher zero-shot",
    "student_zero_shot": "Student zero-shot",
    "student_prompt": "Student + user prompt (what the user gets locally)",
    "direct_transfer": "Teacher + user prompt (direct transfer)",
    "post_transfer": "Teacher + transferred prompt (POST)",
    "teacher_tuned": "Teacher + prompt tuned on private data (non-private reference)",
}


def bootstrap_ci(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    n_classes: int,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Percentile bootstrap intervals for accuracy and macro-F1 (resampling examples).

    All resamples at once: per-resample true-positive / predicted / actual counts per class come from
    one bincount over (resample, class), then F1 = 2 TP / (predicted + actual) (0 where both are 0, as
    sklearn's zero_division=0); equal to sklearn's f1_score per resample (tested), ~100x faster."""
    rng = np.random.default_rng(seed)
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    n = len(y_true)
    idx = rng.integers(0, n, size=(n_boot, n))
    correct = (y_true == y_pred).astype(float)
    accs = correct[idx].mean(1)
    t, p = y_true[idx], y_pred[idx]
    rows = np.arange(n_boot)[:, None] * n_classes

    def counts(cls, weights=None):
        return np.bincount(
            (rows + cls).ravel(),
            weights=None if weights is None else weights.ravel(),
            minlength=n_boot * n_classes,
        ).reshape(n_boot, n_classes)

    tp = counts(t, (t == p).astype(float))
    denom = counts(t) + counts(p)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp, dtype=float), where=denom > 0)
    f1s = f1.mean(1)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {
        "accuracy_ci": [float(np.percentile(accs, lo)), float(np.percentile(accs, hi))],
        "macro_f1_ci": [float(np.percentile(f1s, lo)), float(np.percentile(f1s, hi))],
        "level": level,
        "n_boot": n_boot,
    }


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _plots(run_dir: Path, results: dict, transfer: dict) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: dict[str, str] = {}
    base = results.get("baselines", {})
    if base and _is_generation(base):
        plots["generation"] = _png(_generation_plot(base))
    elif base:
        names = [k for k in BASELINE_LABELS if k in base]
        accs = [base[k]["accuracy"] for k in names]
        err = np.array(
            [
                [
                    base[k]["accuracy"] - base[k]["accuracy_ci"][0],
                    base[k]["accuracy_ci"][1] - base[k]["accuracy"],
                ]
                for k in names
            ]
        ).T
        fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(names)))
        ax.barh(
            [BASELINE_LABELS[k].split(" (")[0] for k in names],
            accs,
            xerr=err,
            color="#4C72B0",
            capsize=3,
        )
        ax.invert_yaxis()
        ax.set_xlabel("accuracy (95% bootstrap interval)")
        ax.set_xlim(0, 1.08)
        for i, k in enumerate(
            names
        ):  # the value right of its interval, so the whisker never hides it
            ax.text(base[k]["accuracy_ci"][1] + 0.01, i, f"{accs[i]:.3f}", va="center", fontsize=8)
        plots["accuracy"] = _png(fig)
    user_curve = _user_curve_plot(run_dir, plt)
    if user_curve is not None:
        plots["user_validation"] = user_curve
    curve = run_dir / "transfer" / "metrics.jsonl"
    if curve.is_file():
        recs = [json.loads(line) for line in curve.read_text().splitlines() if line.strip()]
        if recs:
            fig, ax = plt.subplots(figsize=(7, 3))
            ax.plot(
                [r["step"] for r in recs],
                [r["loss"] for r in recs],
                lw=0.8,
                label="train batch loss",
            )
            held = [r for r in recs if "heldout_loss" in r]
            if held:
                ax.plot(
                    [r["step"] for r in held],
                    [r["heldout_loss"] for r in held],
                    "o-",
                    label="held-out public loss",
                )
            kept = transfer.get("best") or {}
            if "step" in kept:
                ax.axvline(kept["step"], color="grey", ls="--", lw=0.8, label="kept step")
            ax.set_xlabel("step")
            ax.set_ylabel("transfer loss")
            picked = [r for r in held if "select_accuracy" in r]
            if picked:  # the accuracy the kept step was chosen by, on its own axis
                ax2 = ax.twinx()
                ax2.plot(
                    [r["step"] for r in picked],
                    [r["select_accuracy"] for r in picked],
                    "s-",
                    color="tab:green",
                    label="teacher accuracy, labelled public selection set",
                )
                ax2.set_ylabel("selection accuracy")
                ax2.legend(loc="lower right", fontsize=8)
            ax.legend(loc="upper right", fontsize=8)
            plots["transfer_loss"] = _png(fig)
    sweep = run_dir / "sweep-alpha" / "results.json"
    if sweep.is_file():
        rows = read_json(sweep)["results"]
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.plot([r["alpha"] for r in rows], [r["accuracy"] for r in rows], "o-")
        ax.set_xlabel("alpha")
        ax.set_ylabel("teacher + p_t accuracy")
        plots["alpha_sweep"] = _png(fig)
    roc = run_dir / "audit" / "report" / "roc.png"
    if roc.is_file():
        plots["audit_roc"] = base64.b64encode(roc.read_bytes()).decode()
    return plots


def _user_curve_plot(run_dir: Path, plt) -> str | None:
    """The user's own validation curve while tuning on the student (tune/metrics.jsonl): did the prompt
    learn, and when did it stop improving? None when the run has no tuning evaluations."""
    path = run_dir / "tune" / "metrics.jsonl"
    if not path.is_file():
        return None
    evals = [
        r
        for r in (json.loads(line) for line in path.read_text().splitlines() if line.strip())
        if r.get("type") == "eval"
    ]
    if not evals:
        return None
    fig, ax = plt.subplots(figsize=(7, 3))
    names = [k for k in evals[-1] if k.startswith("val_") and k != "val_seconds"]
    for k in names:
        pts = [(r["step"], r[k]) for r in evals if isinstance(r.get(k), (int, float))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=k[4:])
    best = evals[-1].get("best_step")
    if best is not None:
        ax.axvline(best, color="#999", ls="--", lw=0.8, label=f"kept prompt (step {best})")
    ax.set_xlabel("tuning step (student)")
    ax.set_ylabel("user's validation split")
    ax.legend(fontsize=8)
    return _png(fig)


def _table_md(headers: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _table_html(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _is_generation(base: dict) -> bool:
    return any("rougeL" in b or "bleu" in b for b in base.values())


GEN_METRIC_LABELS = {"rougeL": "ROUGE-L", "bleu": "BLEU", "chrf": "chrF"}


def _generation_plot(base: dict):
    import matplotlib.pyplot as plt

    names = [k for k in BASELINE_LABELS if k in base]
    metrics = [m for m in GEN_METRIC_LABELS if m in base[names[0]]]
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(3.2 * len(metrics) + 2, 0.5 + 0.45 * len(names)), sharey=True
    )
    for ax, m in zip(np.atleast_1d(axes), metrics):
        v = [base[k][m] for k in names]
        err = np.array(
            [
                [base[k][m] - base[k][m + "_ci"][0], base[k][m + "_ci"][1] - base[k][m]]
                for k in names
            ]
        ).T
        ax.barh(
            [BASELINE_LABELS[k].split(" (")[0] for k in names],
            v,
            xerr=err,
            color="#4C72B0",
            capsize=3,
        )
        for i, k in enumerate(names):
            ax.text(base[k][m + "_ci"][1] + 1, i, f"{v[i]:.1f}", va="center", fontsize=8)
        ax.set_xlabel(f"{GEN_METRIC_LABELS[m]} (0-100, 95% CI)")
        ax.set_xlim(0, 100)
    np.atleast_1d(axes)[0].invert_yaxis()
    return fig


def _generation_table(results: dict) -> tuple[str, list[str], list[list]]:
    base = results["baselines"]
    metrics = [m for m in GEN_METRIC_LABELS if any(m in b for b in base.values())]
    rows = []
    for k, label in BASELINE_LABELS.items():
        if k in base:
            b = base[k]
            row = [label]
            for m in metrics:
                row += [f"{b[m]:.2f}", f"[{b[m + '_ci'][0]:.1f}, {b[m + '_ci'][1]:.1f}]"]
            rows.append(row + [f"{b.get('mean_output_words', 0):.1f}", b["n"]])
    headers = ["method"]
    for m in metrics:
        headers += [GEN_METRIC_LABELS[m], "95% CI"]
    return (
        f"Generation on the private task's {results.get('eval_split', 'test')} split "
        "(against all references of each input)",
        headers + ["words/output", "inputs"],
        rows,
    )


def generation_examples(
    run_dir: Path, base: dict, n: int = 3
) -> list[tuple[str, list[str], list[list]]]:
    """A few inputs with their references and every method's output (from evaluate/NAME.jsonl)."""
    outs = {}
    for k in BASELINE_LABELS:
        f = run_dir / "evaluate" / f"{k}.jsonl"
        if k in base and f.is_file():
            outs[k] = [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines()[:n]]
    if not outs:
        return []
    first = next(iter(outs.values()))
    sec = []
    for i, ex in enumerate(first):
        rows = [["references", " | ".join(ex["references"][:3])]]
        rows += [
            [BASELINE_LABELS[k].split(" (")[0], v[i]["output"]]
            for k, v in outs.items()
            if i < len(v)
        ]
        sec.append((f"Example {i + 1}: {' '.join(ex['input'].split())}", ["", "text"], rows))
    return sec


def _sections(
    results: dict, transfer: dict | None = None
) -> list[tuple[str, list[str], list[list]] | tuple[str, str]]:
    sec: list = []
    base = results.get("baselines", {})
    if base and _is_generation(base):
        sec.append(_generation_table(results))
    elif base:
        rows = []
        for k, label in BASELINE_LABELS.items():
            if k in base:
                b = base[k]
                rows.append(
                    [
                        label,
                        f"{b['accuracy']:.4f}",
                        f"[{b['accuracy_ci'][0]:.3f}, {b['accuracy_ci'][1]:.3f}]",
                        f"{b['macro_f1']:.4f}",
                        f"[{b['macro_f1_ci'][0]:.3f}, {b['macro_f1_ci'][1]:.3f}]",
                        b["n"],
                    ]
                )
        sec.append(
            (
                f"Accuracy on the private task's {results.get('eval_split', 'test')} split",
                ["method", "accuracy", "95% CI", "macro-F1", "95% CI", "n"],
                rows,
            )
        )
    priv = results.get("privacy")
    if priv:
        keys = [
            "epsilon",
            "delta",
            "accountant",
            "epsilon_other_accountant",
            "sigma",
            "sample_rate",
            "steps",
            "epochs",
            "max_grad_norm",
            "dataset_size",
            "sampling",
            "protects",
            "not_protected",
        ]
        rows = [[k, priv[k]] for k in keys if k in priv]
        rows += [
            [k, v] for k, v in priv.items() if k not in keys and not isinstance(v, (dict, list))
        ]
        sec.append(("Privacy statement (user's prompt)", ["field", "value"], rows))
    else:
        sec.append(
            (
                "Privacy statement",
                "The user's prompt was tuned without DP: it carries no formal guarantee.",
            )
        )
    cost = results.get("costs", [])
    if cost:
        sec.append(
            (
                "Cost per stage",
                ["stage", "side", "wall time (s)", "tokens processed", "notes"],
                [
                    [
                        c["stage"],
                        c["side"],
                        f"{c['seconds']:.1f}",
                        c.get("tokens", "-"),
                        c.get("notes", ""),
                    ]
                    for c in cost
                ],
            )
        )
    kept = _transfer_rows(transfer or {})
    if kept:
        sec.append(("Transfer: which teacher prompt was kept", ["field", "value"], kept))
    audit = results.get("audit")
    if audit:
        sec.append(
            (
                "Membership-inference audit (LiRA)",
                ["metric", "value"],
                [[k, v] for k, v in audit.items() if not isinstance(v, (dict, list))]
                + _audit_rows(audit),
            )
        )
    moved = (audit or {}).get("transferred")
    if moved:
        sides = [("student (user's prompts)", "student"), ("teacher (transferred)", "teacher")]
        sec.append(
            (
                "Audit of the transferred prompt (same shadows, same attacks)",
                [
                    "side",
                    "AUC",
                    "AUC 95% CI",
                    "p (no membership effect)",
                    "TPR@1%FPR",
                    "95% eps lower bound",
                ],
                [
                    [
                        name,
                        f"{moved[key]['auc']:.4f}",
                        "[{:.4f}, {:.4f}]".format(*moved[key]["auc_ci"]),
                        f"{moved[key]['membership_p_value']:.3g}",
                        f"{moved[key]['tpr_at_1%fpr']:.4f}",
                        f"{moved[key]['empirical_epsilon_lower_bound']:.3g}",
                    ]
                    for name, key in sides
                ],
            )
        )
    info = results.get("info", {})
    if info:
        sec.append(("Run", ["field", "value"], [[k, v] for k, v in info.items()]))
    return sec


def _transfer_metrics(run_dir: Path) -> dict:
    path = run_dir / "transfer" / "metrics.json"
    return read_json(path) if path.is_file() else {}


def _loss(x) -> str:
    return "–" if x is None else f"{x:.4f}"


def _transfer_rows(m: dict) -> list[list]:
    """How the provider chose the teacher prompt it serves (`m`: transfer/metrics.json): the rule,
    the kept step against the run's length, and, when the step was chosen on labelled public data,
    the teacher's accuracy there with and without the prompt (a person checks the choice here)."""
    best = m.get("best")
    if not best:
        return []
    from promptport.transfer_select import LOSS_RULE

    sel = m.get("select_data")
    stopped = " (stopped early: patience)" if m.get("stopped_early") else ""
    rows = [
        ["rule", sel["rule"] if sel else LOSS_RULE],
        ["kept step", f"{best['step']} of {m.get('steps')}{stopped}"],
        [
            "held-out public transfer loss",
            f"{_loss(m.get('initial_heldout_loss'))} at the start, "
            f"{_loss(best.get('heldout_loss'))} kept, {_loss(m.get('final_heldout_loss'))} last",
        ],
        ["public data", f"{m.get('n_public')} examples from {m.get('public_source')}"],
    ]
    if m.get("teacher_tokens") is not None:
        rows.append(["teacher prompt tokens", m["teacher_tokens"]])
    choice = m.get("teacher_tokens_selection")
    if choice:
        rows.append(["prompt length chosen by", choice["rule"]])
    if sel:
        rows += [
            ["selection set", f"{sel['n']} labelled public examples from {sel['data']}"],
            [
                "teacher accuracy on it",
                f"{sel['teacher_zero_shot_accuracy']:.4f} without a prompt, "
                f"{sel['kept_accuracy']:.4f} with the kept prompt"
                + (
                    " (no better than without: the set may not resemble the task)"
                    if sel["below_zero_shot"]
                    else ""
                ),
            ],
        ]
    return rows


def _audit_rows(audit: dict) -> list[list]:
    """The interval and the randomisation test, with what each assumes, as rows a person reads."""
    rows = []
    if "auc_ci" in audit:
        unit = (audit.get("bootstrap") or {}).get("unit", "")
        rows.append(["AUC 95% interval", "[{:.4f}, {:.4f}] ({})".format(*audit["auc_ci"], unit)])
    t = audit.get("membership_test")
    if t:
        rows.append(
            [
                "p-value, membership has no effect",
                f"{t['p_value']:.3g} ({t['draws']} fresh masks; chance AUC for these shadows "
                f"{t['null_auc_95'][0]:.3f}-{t['null_auc_95'][1]:.3f}; {t['assumes']})",
            ]
        )
    return rows


def build_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write RUN_DIR/report.md and RUN_DIR/report.html from RUN_DIR/results.json and the stage files."""
    run_dir = Path(run_dir)
    results = read_json(run_dir / "results.json")
    transfer = _transfer_metrics(run_dir)  # read once: the plot's kept step and the section
    plots = _plots(run_dir, results, transfer)
    title = f"promptport run — {results.get('info', {}).get('task', '')}"
    md = [f"# {title}", "", results.get("summary", ""), ""]
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='summary'>{html.escape(results.get('summary', ''))}</p>",
    ]
    sections = _sections(results, transfer)
    if _is_generation(results.get("baselines", {})):
        sections[1:1] = generation_examples(run_dir, results["baselines"])
    for s in sections:
        md += [f"## {s[0]}", ""]
        body.append(f"<h2>{html.escape(s[0])}</h2>")
        if len(s) == 2:
            md += [s[1], ""]
            body.append(f"<p>{html.escape(s[1])}</p>")
        else:
            md += [_table_md(s[1], s[2]), ""]
            body.append(_table_html(s[1], s[2]))
    captions = {
        "accuracy": "Accuracy per method",
        "generation": "Generation metrics per method",
        "user_validation": "User's validation curve (prompt tuning on the student)",
        "transfer_loss": "Transfer loss",
        "alpha_sweep": "Alpha sweep (teacher + p_t accuracy)",
        "audit_roc": "Membership-inference ROC (log-log)",
    }
    for name, b64 in plots.items():
        (run_dir / "plots").mkdir(exist_ok=True)
        (run_dir / "plots" / f"{name}.png").write_bytes(base64.b64decode(b64))
        md += [f"## {captions[name]}", "", f"![{captions[name]}](plots/{name}.png)", ""]
        body.append(
            f"<h2>{captions[name]}</h2><img alt='{captions[name]}' src='data:image/png;base64,{b64}'/>"
        )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        "th{background:#f3f3f3}.summary{font-size:1.1em}img{max-width:100%}"
    )
    page = (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )
    write_text(run_dir / "report.md", "\n".join(md))
    write_text(run_dir / "report.html", page)
    return run_dir / "report.md", run_dir / "report.html"
