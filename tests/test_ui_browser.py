"""`orchestrator ui` on a store holding a finished, promoted sweep, checked in a real browser: headless
Chromium (Debian's package, which the Makefile installs; Playwright's own browser download is not
used) driven by Playwright, from the link the command prints.

What a new user must find there: the sweep's trials grouped under its name, best first, each trial's
val_exact_recall among the columns shown by default, a trial's adapter and val predictions among its
artifacts, and the registered model's `champion` alias. The screenshots it takes of the runs table and
of the chart comparing the trials are docs/sweeps.md's (docs/runs-table.png, docs/compare-chart.png):
`make screenshots` copies them there (from `pytest tests/test_ui_browser.py --basetemp=DIR`: DIR/screenshots0/).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time

import pytest
from general_support import self_known_probe
from playwright.sync_api import expect, sync_playwright
from service_support import free_port, wait_for_http, without_mlflow_uris
from sweep_support import LEARNS, fast_config, module_store, runs_of

from orchestrator.leaderboard import leaderboard
from orchestrator import run_record
from orchestrator.mlflow_ui import COLUMNS, RUN_COLOUR, RUN_NAME
from orchestrator.server import stop_process_group

pytestmark = [pytest.mark.e2e, pytest.mark.service]

SWEEP, MODEL = "night", "recall-champion"
VAL_RECALL = "metrics.`val_exact_recall`"
GENERAL, MODELS = "metrics.`general_retention`", "attributes.`Models`"
CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def promoted(tmp_path_factory, tokenizer_path):
    """A finished sweep of four trials (the demo's own recipe first, 5 epochs: some recall to show) and its
    best registered as the champion: the store's tracking URI. Its general probe is one the tiny base model
    knows (general_support), so the trials have a general_retention to show."""
    from orchestrator.promote import promote
    from orchestrator.sweep import run_sweep

    tmp_path = tmp_path_factory.mktemp("ui-store")
    probe = self_known_probe(tmp_path / "probe", tokenizer_path)
    with module_store(tmp_path) as uri:
        # No general floor: the tiny trials forget all of that probe, and the floor would tie every objective at
        # -1, so the champion (promotion's top trial by the objective) would be any trial, not the one that won.
        run_sweep(fast_config(tmp_path, *LEARNS, "sweep.num_samples=4", f"eval.general={probe}",
                              "sweep.general_floor=0"), SWEEP)
        # The UI needs an alias to show, not the promotion gate's verdict (tests/test_promote.py's).
        promote(SWEEP, top_k=1, force=True, log=lambda line: None)
    return uri


@pytest.fixture(scope="module")
def ui(promoted, orchestrator, tmp_path_factory):
    """`orchestrator ui` serving the store on a free 127.0.0.1 port, as on a desktop (DISPLAY) whose browser
    ($BROWSER, which Python's webbrowser runs) writes down what it was asked to open: (the link it printed,
    that file)."""
    work = tmp_path_factory.mktemp("ui")
    port, log, opened = free_port(), work / "ui.log", work / "opened"
    browser = f"{sys.executable} -c \"import pathlib, sys; pathlib.Path({str(opened)!r}).write_text(sys.argv[1])\" %s"
    env = {**without_mlflow_uris(), "MLFLOW_TRACKING_URI": promoted, "DISPLAY": ":0", "BROWSER": browser}
    with open(log, "wb") as output:
        process = subprocess.Popen(orchestrator("ui", "--port", str(port)), cwd=work, env=env,
                                   stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", process, log, 120)
        printed = re.search(r"http://127\.0\.0\.1:\d+/#/\S+", log.read_text())
        assert printed, log.read_text()
        yield printed.group(0), opened
    finally:
        stop_process_group(process, timeout=30)


@pytest.fixture(scope="module")
def link(ui):
    return ui[0]


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM, "no chromium on PATH: `make install` installs Debian's (apt-get install chromium)"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def page(browser):
    """A fresh browser (no view state kept from another test) on a wide screen: the runs table draws only
    the columns in sight. MLflow's assistant panel, which opens beside a new browser's first page and
    narrows the table, is closed whenever it shows."""
    context = browser.new_context(viewport={"width": 1920, "height": 1000})
    page = context.new_page()
    close_assistant = page.locator("[data-component-id='mlflow.assistant.chat_panel.close']")
    page.add_locator_handler(close_assistant, lambda: close_assistant.click())
    yield page
    context.close()


def _cell(page, row_id: str, column: str):
    """A cell of the runs table. AG Grid keys a row by MLflow's row id, which for a run in a group ends with
    its run id; columns as MLflow's COLUMNS spell them."""
    return page.locator(f".ag-row[row-id$='{row_id}'] [col-id='{column}']")


def _row_ids(page) -> list[str]:
    """The table's row ids, top to bottom (the grid renders its rows in any order, each with its index)."""
    rows = page.locator(".ag-center-cols-container .ag-row")
    return [row_id for _, row_id in sorted((int(row.get_attribute("row-index")), row.get_attribute("row-id"))
                                           for row in rows.all())]


def test_the_printed_link_lands_on_the_trials_grouped_by_their_sweep_best_first(promoted, link, page, screenshots):
    client, parent, trials = runs_of(promoted, SWEEP)
    board = leaderboard(client, parent.info.run_id)  # first by the sweep's objective
    page.goto(link)
    group = f"tag.{run_record.SWEEP}.{SWEEP}"  # MLflow's id of the group of runs tagged recall.sweep=night
    expect(_cell(page, group, RUN_NAME)).to_contain_text(f"Group: {SWEEP}", timeout=60_000)
    assert re.search(rf"#/experiments/{parent.info.experiment_id}/runs\?", page.url), page.url  # not GenAI's overview
    # The columns people compare are there before anyone picks columns.
    for column in COLUMNS:
        expect(page.locator(f".ag-header-cell[col-id='{column}']")).to_have_count(1)
    # The sweep's trials, and only they, open under its group, the best by the objective first.
    for run in trials:
        expect(_cell(page, run.info.run_id, RUN_NAME).get_by_role("link")).to_have_text(run.info.run_name)
        # (The UI may round a long fraction such as 7/19 to a few digits.)
        for column, metric, within in ((VAL_RECALL, "val_exact_recall", 1e-6), (GENERAL, "general_retention", 5e-3)):
            shown = _cell(page, run.info.run_id, column).inner_text()
            assert float(shown) == pytest.approx(run.data.metrics[metric], abs=within), (run.info.run_name, shown)
    assert _row_ids(page) == [group, *(f"{group}.{row['run_id']}" for row in board)]
    # The sweep's row says what it found without a click: its best val recall.
    shown = _cell(page, group, VAL_RECALL).inner_text()
    assert float(shown.split()[0]) == pytest.approx(max(row["val_exact_recall"] for row in board)), shown
    # The champion's registered model is listed on the trial that won, not on a run of its own.
    champion = client.get_model_version_by_alias(MODEL, "champion").run_id
    assert champion == board[0]["run_id"]
    expect(_cell(page, champion, MODELS)).to_contain_text(MODEL)
    for run in trials:
        if run.info.run_id != champion:
            expect(_cell(page, run.info.run_id, MODELS)).not_to_contain_text(MODEL)
    # Each trial its own colour (the one its run's tag names) in the table and the charts.
    assert len({run.data.tags[RUN_COLOUR] for run in trials}) == len(trials)
    page.screenshot(path=screenshots / "runs-table.png")

    page.locator("label:has(input[value='CHART'])").click()  # the charts of the same rows
    cards = page.get_by_test_id("experiment-view-compare-runs-card")
    expect(cards.first).to_contain_text("val_exact_recall")  # the view's charts come first
    expect(cards.nth(1)).to_contain_text("Parallel Coordinates")
    # The LoRA knobs against recall: rank and alpha among the axes.
    for axis in ("method.r", "method.alpha", "method.dropout", "method.learning_rate", "val_exact_recall"):
        expect(cards.nth(2)).to_contain_text(axis)
    epochs = sum(len(client.get_metric_history(run.info.run_id, "val_exact_recall")) for run in trials)
    expect(cards.first.locator("g.trace .point").nth(epochs - 1)).to_be_attached()  # a point per trial and epoch
    # Its legend names the trials and nothing else: no sweep run, no group (drawn after the points).
    for run in trials:
        expect(cards.first).to_contain_text(f"{run.info.run_name} (val_exact_recall)")
    legend = re.findall(r"^(.+) \(val_exact_recall\)$", cards.first.inner_text(), re.MULTILINE)
    assert sorted(legend) == sorted(run.info.run_name for run in trials), legend
    page.wait_for_timeout(1000)  # the charts animate in
    page.screenshot(path=screenshots / "compare-chart.png")


def test_a_trial_keeps_its_adapter_and_predictions_as_artifacts(promoted, link, page):
    _, _, trials = runs_of(promoted, SWEEP)
    best = max(trials, key=lambda run: run.data.metrics["val_exact_recall"])
    page.goto(link)
    _cell(page, best.info.run_id, RUN_NAME).get_by_role("link", name=best.info.run_name).click()
    page.get_by_role("tab", name="Artifacts").click()
    expect(page.get_by_text("predictions_val.jsonl", exact=True)).to_be_visible(timeout=30_000)
    # Its val answers as a table, one column per field, not raw JSON lines.
    page.get_by_text("predictions_val.json", exact=True).click()
    expect(page.get_by_role("columnheader", name="question")).to_be_visible(timeout=30_000)
    expect(page.get_by_role("columnheader", name="expected")).to_be_visible()
    expect(page.get_by_role("columnheader", name="correct")).to_be_visible()  # the records' own fields
    page.get_by_text("adapter", exact=True).click()
    expect(page.get_by_text("adapter_model.safetensors", exact=True)).to_be_visible()


def test_the_registered_model_shows_its_champion(promoted, link, page):
    page.goto(link)
    page.get_by_role("link", name="Model registry").click()
    page.get_by_role("dialog").get_by_role("button", name="Close").click()  # MLflow's advert for its newer page
    page.get_by_role("link", name=MODEL, exact=True).click()
    expect(page.get_by_text(re.compile(r"^@\s*champion$"))).to_be_visible(timeout=30_000)


def test_ui_opens_its_link_in_the_desktop_browser(ui):
    link, opened = ui
    deadline = time.monotonic() + 30  # it opens the link once the UI answers
    while not opened.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert opened.exists() and opened.read_text() == link
