"""The MLflow UI's view of a sweep experiment, and the link to it that `orchestrator ui` prints.

Three things in MLflow 3's UI (read in 3.17's bundle, mlflow/server/js/build) keep a new user from the
trials, each met here:
- It opens an experiment on its GenAI pages (overview, traces, all empty for training runs) unless the
  workflow is "machine_learning": the UI takes that from the link's `workflowType` parameter, else from
  the browser's last choice in its sidebar switch (GenAI / Model training), not from the experiment.
  The link names it, and the runs tab (`#/experiments/ID/runs`). The experiment's
  `mlflow.experimentKind` tag (set when sweeps create it, orchestrator.tracking) says the same to the
  UI's older code path, which reads the tag when the switch is off.
- The runs table's default columns are Source, Models and Dataset: no recall, no knob. A view the UI
  can share (an experiment tag `mlflow.sharedViewState.KEY`, opened by the link's `viewStateShareKey`)
  sets the columns people compare, and puts the charts of val recall first.
- Trials are nested under their sweep's run, collapsed (a shared view cannot expand a run: MLflow leaves
  expanded, pinned and hidden rows out of it), newest first (nesting holds only when sorted by start
  time), and the sweep's run is a series in every chart. The view instead shows the trials alone, grouped
  by their `recall.sweep` tag (a group starts open, and grouping is part of a shared view), sorted by the
  objective, which keeps the groups: the best trial is the first row under its sweep's.
- MLflow colours a run by hashing its id into a palette, so trials can share a colour; a run's
  `mlflow.runColor` tag, which the UI's colour picker writes, overrides that (orchestrator.mlflow_writer
  sets one per trial).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import webbrowser

from orchestrator import run_record

VIEW_KEY, VIEW_NAME = "recall-trials", "Trials by recall"
SHARED_VIEW = "mlflow.sharedViewState."  # + the key: the UI's name for a shared view's experiment tag


def _column(kind: str, name: str) -> str:
    return f"{kind}.`{name}`"  # the runs table's own spelling of a column


# What people compare trials by, in this order: each run's description (the sweep's names its best trial and
# val recall, a trial's how it ended), recall, the registered model a trial became, the knobs searched, why a
# trial stopped (orchestrator.mlflow_writer writes them, and the run names, to be read here). MLflow's
# defaults (Source, Dataset) say nothing about a trial. All fit a 1920-pixel window: the table does not
# render columns far out of view.
RUN_NAME, DESCRIPTION = _column("attributes", "Run Name"), _column("attributes", "Description")
COLUMNS = [
    DESCRIPTION,
    _column("metrics", run_record.VAL_EXACT_RECALL),
    _column("metrics", run_record.GENERAL_RETENTION),  # what it kept of the base model's general knowledge
    _column("metrics", run_record.TEST_EXACT_RECALL),  # the trials `orchestrator promote` scored on the test split
    _column("attributes", "Models"),
    _column("params", run_record.method_param("r")),
    _column("params", run_record.method_param("alpha")),
    _column("params", run_record.LEARNING_RATE),
    _column("metrics", run_record.TRAIN_EXACT_RECALL),
    _column("tags", run_record.METHOD_SHAPE),
    _column("tags", run_record.STOPPED_BY),
]

# The charts first in view, comparing the trials: val recall per epoch, and what knobs led to it: every
# trial by method and learning rate, then the LoRA trials by rank, alpha, dropout and learning rate (a
# parallel-coordinates chart leaves out a run missing one of its axes, and prefix-tuning has no rank).
# MLflow adds a chart of each other metric after these.
SECTION = "recall"
OUTCOMES = [run_record.VAL_EXACT_RECALL, run_record.OBJECTIVE]
CHARTS = [
    {"uuid": "val-recall-per-epoch", "type": "LINE", "metricKey": run_record.VAL_EXACT_RECALL, "xAxisKey": "step",
     "lineSmoothness": 0, "useGlobalLineSmoothing": False, "scaleType": "linear", "xAxisScaleType": "linear"},
    {"uuid": "val-recall-by-knobs", "type": "PARALLEL",
     "selectedParams": [run_record.METHOD_NAME, run_record.LEARNING_RATE], "selectedMetrics": OUTCOMES},
    {"uuid": "val-recall-by-lora-knobs", "type": "PARALLEL",
     "selectedParams": [*map(run_record.method_param, ("r", "alpha", "dropout")), run_record.LEARNING_RATE],
     "selectedMetrics": OUTCOMES},
]


# The trials only (the sweep's own run would be a series in every chart), grouped by their sweep: the
# group's row shows each column's best over its trials (aggregate "max"), and sorting keeps the groups,
# where nesting under the sweep's run holds only when sorted by start time. Grouping, unlike unfolding a
# run, is part of a shared view, and a group starts open.
TRIALS_ONLY = f"tags.`{run_record.ROLE}` = '{run_record.TRIAL_ROLE}'"
BY_SWEEP = {"aggregateFunction": "max", "groupByKeys": [{"mode": "tag", "groupByData": run_record.SWEEP}]}
OBJECTIVE = _column("metrics", run_record.OBJECTIVE)


def view_state() -> dict:
    """The shared view: the UI's search settings (trials, best by the objective first, grouped by sweep)
    and its table and chart settings: COLUMNS, run name and description columns wide enough for a trial's
    name and how it ended, CHARTS first, every trial in the charts as its own series (MLflow's default
    charts the first 10 rows, or a group as one aggregated series)."""
    return {"searchFilter": TRIALS_ONLY, "orderByKey": OBJECTIVE, "orderByAsc": False,
            "selectedColumns": COLUMNS, "columnOrder": [RUN_NAME, *COLUMNS],
            "columnWidths": {RUN_NAME: 300, DESCRIPTION: 340},
            "runsHiddenMode": "SHOW_ALL", "groupBy": BY_SWEEP, "useGroupedValuesInCharts": False,
            "compareRunSections": [{"uuid": SECTION, "name": "Model metrics", "display": True, "isReordered": True}],
            "compareRunCharts": [{**chart, "metricSectionId": SECTION, "isGenerated": False, "deleted": False,
                                  "runsCountToCompare": 100} for chart in CHARTS]}


RUN_COLOUR = "mlflow.runColor"  # the run's colour in the UI's table and charts, which its colour picker sets


def trial_colour(index: int) -> str:
    """The `index`-th trial's colour in its sweep: matplotlib's tab20, its ten strong colours first, then
    their light twins, so neighbouring trials never share one. MLflow's own pick hashes the run id into
    its palette, and two of four trials can land on one colour."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    palette = colormaps["tab20"].colors
    return to_hex(palette[(2 * index) % 20 + (index // 10) % 2])


def publish_view(client, experiment_id: str) -> None:
    """Store the view on the experiment, where the link finds it and the UI's "Views" menu lists it by
    VIEW_NAME; rewritten only when its state changed (a newer COLUMNS), as a sweep may be writing to
    the same SQLite file. The tag's value is the envelope the UI writes for a view it saves itself."""
    state = json.dumps(view_state())
    saved = client.get_experiment(experiment_id).tags.get(SHARED_VIEW + VIEW_KEY)
    if saved is None or json.loads(saved).get("state") != state:
        now = int(time.time() * 1000)
        envelope = {"name": VIEW_NAME, "createdAt": now, "updatedAt": now, "state": state}
        client.set_experiment_tag(experiment_id, SHARED_VIEW + VIEW_KEY, json.dumps(envelope))


def runs_link(base_url: str, experiment_id: str) -> str:
    """The experiment's training runs in the Model training workflow, in the shared view."""
    return (f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}")


def desktop_browser() -> bool:
    """Whether there is a desktop to open a browser on. Without one, `webbrowser` would pick a console
    browser (w3m, lynx) and take over the terminal the UI logs to."""
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def open_when_up(link: str, base_url: str) -> None:
    """Open `link` once the UI answers, from a process of its own: `orchestrator ui` becomes the UI
    server (exec) right after this returns."""
    subprocess.Popen([sys.executable, "-m", "orchestrator.mlflow_ui", link, base_url],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _open_when_healthy(link: str, base_url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=2):
                webbrowser.open(link)
                return
        except OSError:
            time.sleep(0.5)


if __name__ == "__main__":
    _open_when_healthy(sys.argv[1], sys.argv[2])
