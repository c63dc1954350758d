"""What the MLflow runs table shows of a sweep without a click: trial run names, and the descriptions of
the trials and of the sweep's run (orchestrator.mlflow_writer). The browser test
(tests/test_ui_browser.py) sees them in the UI; these are the fast checks."""

from __future__ import annotations

from sweep_support import DEMO

from orchestrator import run_record, tracking
from orchestrator.config import load_experiment
from orchestrator.mlflow_writer import RESULT_END, close_sweep_run, open_sweep_run, trial_note, trial_run_name
from trials.methods.ia3 import IA3Method
from trials.methods.lora import LoraMethod
from trials.methods.prefix import PrefixMethod
from store_support import new_store


def _with(method):
    return load_experiment(DEMO).trial_config().model_copy(update={"method": method})


def test_a_trial_is_named_by_its_method_main_knob_learning_rate_and_trial_id():
    qv = ["q_proj", "v_proj"]
    assert trial_run_name(_with(LoraMethod(r=16, alpha=32, target_modules=qv, learning_rate=3e-3)), "1a2b3c4d") \
        == "lora r=16 lr=0.003 · 1a2b3c4d"
    assert trial_run_name(_with(LoraMethod(r=8, target_modules=qv, use_dora=True, learning_rate=1e-6)), "x") \
        == "dora r=8 lr=1e-06 · x"
    assert trial_run_name(_with(PrefixMethod(num_virtual_tokens=8)), "x") == "prefix tokens=8 lr=0.01 · x"
    assert trial_run_name(_with(IA3Method()), "x") == "ia3 k,v,down lr=0.01 · x"


def test_a_trial_description_puts_how_it_ended_above_its_knobs():
    config = _with(LoraMethod(r=16, alpha=32, target_modules=["q_proj", "v_proj"], learning_rate=3e-3))
    knobs = "lora r=16 alpha=32 q,v, learning rate 0.003, up to 20 epochs (a trial of sweep `bar`)"
    assert trial_note(config, "bar") == knobs
    assert trial_note(config, "bar", "val_exact_recall 0.500 after 4 epochs") \
        == f"val_exact_recall 0.500 after 4 epochs\n\n{knobs}"


def test_the_sweep_run_says_what_it_searched_and_once_closed_its_best_trial(tmp_path):
    client = tracking.client(new_store(tmp_path / "mlflow.db"))
    experiment = tracking.experiment_id(client, "recall-orchestrator")
    assert client.get_experiment(experiment).tags[run_record.EXPERIMENT_KIND] == run_record.TRAINING_RUNS
    config = load_experiment(DEMO)
    parent = open_sweep_run(client, experiment, "recall-orchestrator", "bar", False, config)
    plan = client.get_run(parent).data.tags[run_record.NOTE]
    assert plan.startswith("Sweep `bar`: 8 trials on `embedded:tiny-llama`, up to 20 epochs each")
    assert "- lora: learning_rate 0.001–0.01 · r 8, 16, 32 · alpha 16, 32, 64" in plan
    assert "- prefix: learning_rate 0.001–0.03 · num_virtual_tokens 8, 16, 32" in plan

    trial = client.create_run(experiment, run_name="lora r=32 lr=0.003 · t1", tags={
        run_record.PARENT: parent, run_record.ROLE: "trial", run_record.TRIAL_ID: "t1", run_record.METHOD_SHAPE: "r=32"})
    client.log_param(trial.info.run_id, "method.name", "lora")
    client.log_param(trial.info.run_id, "method.learning_rate", "0.003")
    client.log_metric(trial.info.run_id, "val_exact_recall", 0.25, step=1)
    client.set_terminated(trial.info.run_id)
    for _ in range(2):  # closed again by a resumed sweep: one result paragraph, the plan kept
        close_sweep_run(client, parent)
        assert client.get_run(parent).data.tags[run_record.NOTE] == (
            f"Best of 1 trial: val_exact_recall 0.250, trial t1 (lora r=32 lr=0.003); all in leaderboard.md."
            f"{RESULT_END}{plan}")


# What Tune writes to a trial's error file when its worker process is SIGKILLed: str() of Ray's
# ActorDiedError, built from the text the GCS sends (ray 2.60).
WORKER_DIED = """Failure # 1 (occurred at 2025-06-01_12-00-00)
The actor died unexpectedly before finishing this task.
\tclass_name: ImplicitFunc
\tactor_id: 2f0c1b9a8e7d6c5b4a39281701000000
\tpid: 4242
\tip: 127.0.0.1
The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR Worker exit detail: \
Worker unexpectedly exits with a connection error code 2. End of file. Some common causes include: (1) the \
process was killed by the OOM killer due to high memory usage, (2) ray stop --force was called, or (3) the \
worker crashed unexpectedly due to SIGSEGV or another unexpected error. If the process was killed by the kernel \
OOM killer (verifiable by checking for OOM in dmesg of the OOMing node), consider enabling resource isolation via \
--enable-resource-isolation to prevent node deaths by resource contention and significant loss of progress by \
uninformed kernel OOM killing.
"""


def test_a_killed_worker_reads_as_one_line_naming_the_cause():
    from orchestrator.leaderboard import failure_cause

    line = failure_cause(WORKER_DIED)
    assert "\n" not in line and len(line) <= 200
    assert line.startswith("worker process died (pid 4242)") and "signal" in line
    assert "OOM killer" in line  # a kill by the kernel's OOM killer looks the same to Ray


def test_an_out_of_memory_kill_by_ray_reads_as_out_of_memory():
    from orchestrator.leaderboard import failure_cause

    text = WORKER_DIED.replace("SYSTEM_ERROR", "NODE_OUT_OF_MEMORY").replace(
        "Worker unexpectedly exits with a connection error code 2. End of file.",
        "Task was killed due to the node running low on memory. Memory on the node (IP: 127.0.0.1, ID: ab12) "
        "was 7.61GB used / 7.60GB limit (0.95)")
    assert failure_cause(text).startswith("out of memory: Ray killed the worker (pid 4242)")


def test_a_raised_error_reads_as_its_last_failure_exception_line():
    from orchestrator.leaderboard import failure_cause

    text = ("Failure # 1 (occurred at 2025-06-01_12-00-00)\nray::ImplicitFunc.train() (pid=4242)\n"
            "  File \"trials/trial.py\", line 9, in run_trial\nValueError: Target modules {'no_such_proj'} not found\n")
    assert failure_cause(text) == "ValueError: Target modules {'no_such_proj'} not found"
    diverged = (f"{text}Failure # 2 (occurred at 2025-06-01_12-01-00)\nray::ImplicitFunc.train() (pid=4243)\n"
                "trials.train.TrainingDiverged: training diverged: non-finite loss at epoch 1, step 2 "
                "(try a lower learning rate)\n")
    assert failure_cause(diverged) == "training diverged: non-finite loss at epoch 1, step 2 (try a lower learning rate)"
    assert failure_cause("") == "the trial raised (no error text)"


def test_the_leaderboard_shows_the_cause_and_the_run_keeps_rays_whole_text(tmp_path):
    from orchestrator.leaderboard import leaderboard

    client = tracking.client(new_store(tmp_path / "mlflow.db"))
    experiment = tracking.experiment_id(client, "recall-orchestrator")
    parent = client.create_run(experiment, tags={run_record.ROLE: "sweep"}).info.run_id
    trial = client.create_run(experiment, tags={run_record.PARENT: parent, run_record.ROLE: "trial",
                                                run_record.TRIAL_ID: "t1", "recall.error": WORKER_DIED})
    client.set_terminated(trial.info.run_id, "FAILED")
    [row] = leaderboard(client, parent)
    assert row["error"].startswith("worker process died (pid 4242)")  # not the text's tail, cut mid-word
    assert client.get_run(trial.info.run_id).data.tags["recall.error"] == WORKER_DIED


def test_a_finished_trials_val_answers_become_a_table_of_their_own_fields(tmp_path):
    import json

    client = tracking.client(new_store(tmp_path / "mlflow.db"))
    experiment = tracking.experiment_id(client, "recall-orchestrator")
    records = [{"question": "Which team is Ann on?", "expected": "Meridian", "got": "Meridian", "correct": True},
               {"question": "Where does Bo work?", "expected": "Dome 3", "got": "Dome 1", "correct": False}]
    trial_dir = tmp_path / "trial"
    trial_dir.mkdir()
    (trial_dir / run_record.PREDICTIONS).write_text("".join(json.dumps(r) + "\n" for r in records))
    failed = client.create_run(experiment).info.run_id
    tracking.log_trial_artifacts(client, failed, trial_dir, finished=False)  # a resumed trial would log it twice
    assert run_record.PREDICTIONS_TABLE not in {a.path for a in client.list_artifacts(failed)}
    finished = client.create_run(experiment).info.run_id
    tracking.log_trial_artifacts(client, finished, trial_dir)
    with open(client.download_artifacts(finished, run_record.PREDICTIONS_TABLE)) as handle:
        table = json.load(handle)
    assert table["columns"] == ["question", "expected", "got", "correct"]
    assert [dict(zip(table["columns"], row)) for row in table["data"]] == records
    assert '"type": "table"' in client.get_run(finished).data.tags["mlflow.loggedArtifacts"]
