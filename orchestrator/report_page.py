"""report.html: a sweep's report as one self-contained page (images inline as base64, no scripts, no
links it needs), so that it opens from a mail attachment or an MLflow artifact view alike."""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from pathlib import Path

from orchestrator import run_record, tracking
from orchestrator.leaderboard import REPORT_COLUMNS, leaderboard_columns

CAPTIONS = {
    "learning_curves.png": "Val exact recall per epoch of every trial (short lines were stopped early), and the "
                           "val answer loss early stopping compares at its rungs.",
    "learning_rate.png": "Final val exact recall against learning rate, by method.",
    "recall_by_trial_epochs.png": "Best val recall so far against the trial-epochs spent, beside what training "
                                  "every trial to training.epochs would have cost.",
    "optimization_history.png": "Optuna: the objective of every finished trial, and the best so far.",
    "param_importances.png": "Optuna: how much each parameter explains the objective (PED-ANOVA).",
    "parallel_coordinate.png": "Optuna: every finished trial's parameters, coloured by its objective.",
    "ledger_heatmap.png": "The per-fact ledger of the top trial: each val fact's score under eval.objective at "
                          "every scored epoch (a dot where it passed).",
}

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
tr.miss td { background: #fff1f0; }
tr.champion td { background: #f0f7ff; font-weight: 600; }
img { max-width: 100%; border: 1px solid #eee; }
code { background: #f5f5f5; padding: 0 0.2em; }
.note { color: #8a5a00; }
</style></head><body>
<h1>{{ title }}</h1>
<p>MLflow run <code>{{ run_id }}</code> at <code>{{ tracking_uri }}</code>, reported {{ when }}.
{% if study_name %}Optuna study <code>{{ study_name }}</code> in <code>{{ storage }}</code>
(<code>make dashboard OPTUNA_STORAGE={{ storage }}</code> shows it in optuna-dashboard).{% endif %}</p>
{% for note in notes %}<p class="note">Note: {{ note }}</p>{% endfor %}
<h2>Leaderboard</h2>
<table><tr>{% for column in columns %}<th>{{ column }}</th>{% endfor %}</tr>
{% for row in board %}<tr{% if row.champion %} class="champion"{% endif %}>{% for column in columns %}<td>{{ cell(row[column]) }}</td>{% endfor %}</tr>{% endfor %}
</table>
{% for figure in figures %}<h2>{{ figure.name }}</h2><p>{{ figure.caption }}</p>
<img alt="{{ figure.name }}" src="data:image/png;base64,{{ figure.data }}">
{% endfor %}
{% if answers %}<h2>Answers</h2>
<p>{{ answers.whose }}, {{ answers.split }} split: {{ answers.misses | length }} of {{ answers.records | length }}
questions missed (misses first).</p>
<table><tr><th>question</th><th>expected</th><th>got</th><th>correct</th></tr>
{% for r in answers.records | sort(attribute="correct") %}<tr{% if not r.correct %} class="miss"{% endif %}>
<td>{{ r.question }}</td><td>{{ r.expected }}</td><td>{{ r.got }}</td><td>{{ "yes" if r.correct else "no" }}</td></tr>
{% endfor %}</table>{% endif %}
{% if facts %}<h2>Facts</h2>
<p>{{ facts.summary() }}.</p>
<h3>No trial learned ({{ facts.never_learned | length }})</h3>
{% if facts.never_learned %}<table><tr><th>question</th><th>expected</th></tr>
{% for q in facts.never_learned %}<tr class="miss"><td>{{ q }}</td><td>{{ facts.expected[q] }}</td></tr>{% endfor %}
</table>{% else %}<p>None.</p>{% endif %}
<h3>Learned, then lost ({{ facts.lost | length }})</h3>
<p>Passed at an epoch and failed at a later one: per trial, the epoch it last passed and the epoch it failed.</p>
{% if facts.lost %}<table><tr><th>question</th><th>expected</th><th>trials</th></tr>
{% for q, items in facts.lost.items() %}<tr><td>{{ q }}</td><td>{{ facts.expected[q] }}</td><td>
{% for i in items %}{{ i.trial }} {{ i.learned }}&rarr;{{ i.lost }}{% if i.final_pass %} (back by the end){% endif %}
{% if not loop.last %}; {% endif %}{% endfor %}</td></tr>{% endfor %}</table>{% else %}<p>None.</p>{% endif %}
{% endif %}
</body></html>
"""


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def render(title: str, board: list[dict], paths: list[Path], answers, notes: list[str], parent,
           facts=None) -> str:
    import jinja2

    figures = [{"name": path.stem.replace("_", " "), "caption": CAPTIONS.get(path.name, ""),
                "data": base64.b64encode(path.read_bytes()).decode("ascii")}
               for path in paths if path.suffix == ".png"]
    template = jinja2.Environment(autoescape=True).from_string(TEMPLATE)
    return template.render(
        title=title, board=board, columns=leaderboard_columns(board, REPORT_COLUMNS), cell=_cell, figures=figures,
        answers=answers, facts=facts, notes=notes, run_id=parent.info.run_id, tracking_uri=tracking.tracking_uri(),
        study_name=parent.data.tags.get(run_record.OPTUNA_STUDY), storage=parent.data.tags.get(run_record.OPTUNA_STORAGE),
        when=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
