"""Promotion to the MLflow Model Registry, and answering from the champion, end to end.

Real pieces throughout: two short real trials (peft adapters on the embedded tiny Llama), a real
MLflow SQLite store per test in tmp_path, real registration, pyfunc loading, `mlflow models serve`
and the `orchestrator ask` command. The one fake is the injected registration failure.

The two trials are logged as sweeps by hand, in the layout orchestrator.tracking documents
(parent run + FINISHED child runs with params, val_exact_recall and the trial's artifacts), so
each test can arrange which trials a sweep holds without running Ray.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from promote_support import EXPERIMENT, MODEL, Trained, log_sweep, promote, trial_config
from store_support import new_store

pytestmark = pytest.mark.e2e


# --- two real trials, trained once for the module ---------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_documents, demo_qa):
    """A strong adapter (a few epochs of the demo recipe) and a weak one (one epoch at lr 1e-6),
    each with its real test recall."""
    from trials.data import load_knowledge
    from trials.evaluate import generation_budget, load_trained, score_adapter, score_rows
    from trials.trial import run_trial

    root = tmp_path_factory.mktemp("trials")
    trials = {}
    for name, epochs, learning_rate in (("strong", 5, 3e-3), ("weak", 1, 1e-6)):
        config = trial_config(demo_documents, demo_qa, epochs=epochs, learning_rate=learning_rate)
        run_trial(config, root / name, log=lambda line: None)
        trials[name] = Trained(root / name)
        trials[name].test_recall = score_adapter(root / name / "adapter", config, "test")["test"][0]["exact_recall"]
    strong, weak = trials["strong"], trials["weak"]
    assert strong.test_recall > weak.test_recall, (strong.test_recall, weak.test_recall)
    # A train question the strong adapter answers right, with its exact answer, for `ask`
    # (one batch of train questions is plenty: its train recall is well above zero).
    knowledge = load_knowledge(strong.config.data)
    model, tokenizer, device, bf16 = load_trained(strong.dir / "adapter", strong.config)
    _, records = score_rows(model, tokenizer, knowledge.split("train")[:64], batch_size=64, bf16=bf16,
                            max_new_tokens=generation_budget(tokenizer, knowledge, strong.config.eval), device=device)
    strong.learned = next(record for record in records if record["correct"])
    return strong, weak


# --- helpers ------------------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    uri = new_store(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return uri


def versions(model: str = MODEL) -> list[str]:
    from orchestrator import tracking

    return sorted(str(v.version) for v in tracking.client().search_model_versions(f"name = '{model}'"))


def champion_version(model: str = MODEL) -> str:
    from orchestrator import tracking

    return str(tracking.client().get_model_version_by_alias(model, "champion").version)


# --- promotion ----------------------------------------------------------------------------------------

def test_promotion_picks_by_test_not_val(store, trained):
    from orchestrator import tracking
    from trials.data import fingerprint

    strong, weak = trained
    # The val recall logged for the weak trial is made up on purpose, higher than the strong one's
    # real val recall, so that val and test disagree: the weak adapter ranks first by val (the order
    # the sweep would give) while its real test recall is lower. Promotion must go by test.
    strong_run, weak_run = log_sweep("disagree", [(strong, strong.metrics["val_exact_recall"]),
                                                  (weak, strong.metrics["val_exact_recall"] + 0.2)])

    outcome = promote("disagree", top_k=2)

    assert outcome.promoted and outcome.new_version
    assert [c.run_id for c in outcome.candidates] == [strong_run, weak_run]  # best first, by test
    assert versions() == ["1"] and champion_version() == "1"
    client = tracking.client()
    version = client.get_model_version(MODEL, "1")
    tags = version.tags
    assert tags["source_run_id"] == strong_run
    assert tags["sweep"] == "disagree"
    assert float(tags["test_exact_recall"]) == pytest.approx(strong.test_recall, abs=1e-6)
    assert float(tags["val_exact_recall"]) == pytest.approx(strong.metrics["val_exact_recall"], abs=1e-6)
    data = strong.config.data
    assert tags["data_fingerprint"] == strong.metrics["data_fingerprint"] == fingerprint([*data.documents, data.qa])
    assert json.loads(tags["trial_config"]) == json.loads(strong.config.model_dump_json())
    # The registry page's description says the same for people: what it learned and how it scored.
    from trials.data import load_knowledge

    rows = load_knowledge(strong.config.data)
    assert version.description.startswith(f"Trial {tags['trial']} of sweep `disagree`: lora (")
    assert (f"- Learned: {len(rows.split('train'))} train, {len(rows.split('val'))} val, {len(rows.split('test'))} "
            f"test questions, data fingerprint `{tags['data_fingerprint']}`.") in version.description
    assert f"- Test exact_recall: {tags['test_exact_recall']} (val {tags['val_exact_recall']})." in version.description
    # The test scores went back onto every candidate's run.
    for run_id, trial in ((strong_run, strong), (weak_run, weak)):
        assert client.get_run(run_id).data.metrics["test_exact_recall"] == pytest.approx(trial.test_recall)
    # With top-k 1 only the val leader (the weak trial) would have been considered.
    assert outcome.candidates[-1].val_recall > outcome.candidates[0].val_recall


def test_gate_refuses_a_worse_candidate_accepts_a_better_one(store, trained):
    strong, weak = trained
    log_sweep("strong-only", [(strong, strong.metrics["val_exact_recall"])])
    log_sweep("weak-only", [(weak, 0.99)])  # a high val recall cannot get past the test gate

    assert promote("strong-only").promoted
    assert champion_version() == "1"

    refused = promote("weak-only")
    assert not refused.promoted
    assert refused.champion.version == "1" and refused.champion.test_recall == pytest.approx(strong.test_recall)
    assert versions() == ["1"] and champion_version() == "1"

    forced = promote("weak-only", force=True)
    assert forced.promoted and forced.new_version
    assert versions() == ["1", "2"] and champion_version() == "2"

    # The strong trial beats champion v2 on test: accepted, and its existing version 1 is reused.
    back = promote("strong-only")
    assert back.promoted and not back.new_version
    assert versions() == ["1", "2"] and champion_version() == "1"


def test_promoting_twice_creates_no_second_version(store, trained, capsys):
    from orchestrator.cli import main

    strong, _ = trained
    log_sweep("twice", [(strong, strong.metrics["val_exact_recall"])])

    assert main(["promote", "--sweep", "twice"]) == 0
    assert "registered as new version 1" in " ".join(capsys.readouterr().out.split())
    assert main(["promote", "--sweep", "twice"]) == 3  # refused: nothing promoted, which scripts can tell
    assert "kept champion v1" in " ".join(capsys.readouterr().out.split())
    assert main(["promote", "--sweep", "twice", "--force"]) == 0  # forced: still the same version
    assert "already registered as version 1" in " ".join(capsys.readouterr().out.split())
    assert versions() == ["1"] and champion_version() == "1"


def test_failed_registration_leaves_the_alias(store, trained, monkeypatch):
    import mlflow

    from orchestrator import run_record, tracking

    strong, weak = trained
    log_sweep("old", [(weak, weak.metrics["val_exact_recall"])])
    [new_run] = log_sweep("new", [(strong, strong.metrics["val_exact_recall"])])
    assert promote("old", force=True).promoted and champion_version() == "1"  # forced: weak is below the floor

    def registry_down(*args, **kwargs):  # called after the model has been logged
        raise RuntimeError("registry down")

    register_model = mlflow.register_model
    monkeypatch.setattr(mlflow, "register_model", registry_down)
    with pytest.raises(RuntimeError, match="registry down"):
        promote("new")
    assert versions() == ["1"] and champion_version() == "1"
    client = tracking.client()
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    logged = client.search_logged_models([experiment])
    assert len(logged) == 2, "the model was logged before registration failed"
    # On the trial's own run, which stays as it was: no promotion run poses as a trial.
    trial_run = client.get_run(logged[0].source_run_id)
    assert trial_run.data.tags[run_record.ROLE] == "trial" and trial_run.info.status == "FINISHED"
    assert {run.data.tags.get(run_record.ROLE) for run in client.search_runs([experiment])} == {"sweep", "trial"}

    monkeypatch.setattr(mlflow, "register_model", register_model)  # back up: the promotion goes through
    ended = client.get_run(new_run).info.end_time
    assert promote("new").promoted
    assert versions() == ["1", "2"] and champion_version() == "2"
    # The registry's source is the trial that won (the MLflow UI lists the version on its row), and its run
    # keeps its status and end time.
    assert tracking.client().get_model_version(MODEL, "2").run_id == new_run
    assert client.get_run(new_run).info.end_time == ended and client.get_run(new_run).info.status == "FINISHED"


def test_a_candidate_whose_adapter_holds_nan_is_skipped(store, trained, tmp_path):
    from safetensors.torch import load_file, save_file

    from orchestrator.errors import PromotionError

    strong, _ = trained
    broken_dir = tmp_path / "nan-trial"
    shutil.copytree(strong.dir, broken_dir)
    weights = broken_dir / "adapter" / "adapter_model.safetensors"
    tensors = load_file(weights)
    name = min(tensors)
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, weights, metadata={"format": "pt"})
    broken = Trained(broken_dir)
    # The broken trial leads by val (its metrics predate whatever broke it): it must still not be promoted.
    broken_run, strong_run = log_sweep("nan", [(broken, 0.99), (strong, strong.metrics["val_exact_recall"])])

    logged = []
    outcome = promote("nan", top_k=1, log=logged.append)
    assert [c.run_id for c in outcome.candidates] == [strong_run]  # the next trial took its place
    assert outcome.promoted and versions() == ["1"]
    assert any(f"run {broken_run}" in line and "NaN or inf" in line and name in line for line in logged), logged

    log_sweep("only-nan", [(broken, 0.99)])
    with pytest.raises(PromotionError, match="every FINISHED trial's adapter holds NaN or inf"):
        promote("only-nan", force=True)
    assert versions() == ["1"]


def test_first_champion_must_score_above_the_floor(store, trained, capsys):
    from orchestrator.cli import main
    from orchestrator.errors import PromotionError

    strong, weak = trained
    assert weak.test_recall == 0.0  # one epoch at lr 1e-6 recalls nothing: the model that used to become champion
    log_sweep("zero", [(weak, 0.9)])
    log_sweep("strong", [(strong, strong.metrics["val_exact_recall"])])

    refused = promote("zero")
    assert not refused.promoted and refused.floor == 0.0 and versions() == []
    assert "no champion yet, none promoted" in refused.reason and "not above the floor 0.000" in refused.reason

    # A floor of the strong trial's own test recall: it is not above it; a lower one lets it through.
    assert main(["promote", "--sweep", "strong", "--min-test-recall", str(strong.test_recall)]) == 3
    assert "not above the floor" in " ".join(capsys.readouterr().out.split()) and versions() == []
    assert promote("strong", min_test_recall=strong.test_recall - 0.01).promoted and versions() == ["1"]

    with pytest.raises(PromotionError, match="--min-test-recall must be at least 0 and below 1"):
        promote("strong", min_test_recall=1.0)


def test_first_champion_must_beat_the_seed_recipe_trial(store, trained):
    import copy

    from orchestrator.promote import SEED_RECIPE

    strong, _ = trained
    # A trial run of the seed recipe's knobs that, here, scores as well as the strong trial on test
    # (it carries the strong adapter): the best candidate is then not above the seed recipe.
    seed = copy.copy(strong)
    seed.config = strong.config.model_copy(update={"method": SEED_RECIPE})
    strong_run, seed_run = log_sweep("with-seed", [(strong, strong.metrics["val_exact_recall"]), (seed, 0.0)])

    refused = promote("with-seed", top_k=1)
    assert not refused.promoted and versions() == []
    assert [c.run_id for c in refused.candidates] == [strong_run]
    assert refused.seed.run_id == seed_run and refused.seed.role == "seed"
    assert refused.floor == pytest.approx(strong.test_recall)
    assert "seed-recipe trial with-seed-t1's test score" in refused.reason

    assert promote("with-seed", top_k=1, force=True).promoted and versions() == ["1"]


def test_the_seed_recipe_is_the_bench_s_and_the_demo_s_first_point(repo_root):
    from bench.seed_recipe import SEED
    from orchestrator.config import load_experiment
    from orchestrator.promote import SEED_RECIPE
    from orchestrator.search_space import trial_config_for

    assert SEED_RECIPE == SEED.method()
    demo = load_experiment(repo_root / "configs" / "demo.yaml")
    point = demo.search_space.points_to_evaluate[0]
    assert trial_config_for(demo.trial_config(), point, demo.search_space).method == SEED_RECIPE


def test_a_killed_sweep_is_promoted_only_when_allowed(store, trained, capsys):
    from orchestrator import tracking
    from orchestrator.cli import main

    strong, _ = trained
    log_sweep("interrupted", [(strong, strong.metrics["val_exact_recall"])])
    client = tracking.client()
    client.set_terminated(tracking.find_sweep_run(client, EXPERIMENT, "interrupted").info.run_id, "KILLED")

    assert main(["promote", "--sweep", "interrupted"]) == 2
    err = capsys.readouterr().err
    assert "sweep 'interrupted' was stopped before it finished (its run is KILLED)" in err
    assert "--allow-incomplete" in err and versions() == []
    assert main(["promote", "--sweep", "interrupted", "--allow-incomplete"]) == 0
    assert "registered as new version 1" in " ".join(capsys.readouterr().out.split()) and versions() == ["1"]


def test_every_input_is_checked_before_any_write(store, trained, capsys):
    from orchestrator import tracking
    from orchestrator.cli import main

    strong, _ = trained
    (run_id,) = log_sweep("quotes", [(strong, strong.metrics["val_exact_recall"])])
    client = tracking.client()
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    # MLflow's search filters cannot name a model holding both quote kinds: found out after registering,
    # such a name once left a version 1 with no alias behind.
    assert main(["promote", "--sweep", "quotes", "--model-name", "team's \"best\""]) == 2
    assert client.search_registered_models() == [] and not client.search_logged_models([experiment])
    assert "--model-name holds both quote kinds" in capsys.readouterr().err
    # Every problem at once: the registry refuses '/' (after the model was logged, it used to).
    assert main(["promote", "--sweep", "quotes", "--model-name", "teams/best", "--top-k", "0"]) == 2
    err = capsys.readouterr().err
    assert "--model-name holds '/'" in err and "--top-k must be at least 1" in err
    assert client.search_registered_models() == [] and not client.search_logged_models([experiment])
    assert "test_exact_recall" not in client.get_run(run_id).data.metrics  # not even the scores went back


def test_two_promotions_at_once_register_one_version(store, trained, orchestrator, tmp_path):
    from orchestrator import tracking

    strong, _ = trained
    (run_id,) = log_sweep("race", [(strong, strong.metrics["val_exact_recall"])])
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "HF_HUB_OFFLINE": "1"}
    for attempt in range(3):  # a fresh registered model each time, so each attempt races from nothing
        model = f"race-{attempt}"
        processes = [subprocess.Popen(orchestrator("promote", "--sweep", "race", "--model-name", model), env=env,
                                      cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(2)]
        outputs = [process.communicate(timeout=300) for process in processes]
        said = [" ".join(out.split()) for out, _ in outputs]
        for process, text, (_, err) in zip(processes, said, outputs):
            # One that came after the winner may find its trial already champion: the gate keeps it (3).
            assert process.returncode == (3 if "kept champion v1" in text else 0), err[-3000:]
        assert versions(model) == ["1"] and champion_version(model) == "1", said
        assert sum("registered as new version 1" in text for text in said) == 1, said
        # The other one lost the race ("already promoted as version 1 by another process") or came after
        # the winner had registered (then it reuses version 1, or keeps it as champion).
        assert all(any(phrase in text for phrase in ("registered as new version 1", "by another process",
                                                     "already registered as version 1", "kept champion v1"))
                   for text in said), said
        assert tracking.client().get_model_version(model, "1").tags["source_run_id"] == run_id


# --- answering from the champion ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def champion(trained, tmp_path_factory):
    """A store whose champion is the strong trial: (tracking URI, strong trial)."""
    strong, _ = trained
    uri = new_store(tmp_path_factory.mktemp("champion") / "mlflow.db")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        log_sweep("served", [(strong, strong.metrics["val_exact_recall"])])
        assert promote("served").promoted
    return uri, strong


def test_registry_model_answers_as_the_trial_did(champion, monkeypatch):
    import mlflow
    import pandas as pd

    from orchestrator.tracking import use_store

    uri, strong = champion
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    use_store()
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    questions = [record["question"] for record in strong.val_predictions]
    assert model.predict(questions) == [record["got"] for record in strong.val_predictions]

    few, expected = questions[:3], [record["got"] for record in strong.val_predictions[:3]]
    assert model.predict(pd.DataFrame({"question": few})) == expected  # one column: MLflow passes it as the list
    assert model.predict(pd.DataFrame({"inputs": few})) == expected
    # The version's schema: questions in, one answer each out, and a chat client's request options.
    signature = model.metadata.signature
    assert signature.inputs.to_dict() == signature.outputs.to_dict() == [{"type": "string", "required": True}]
    assert {param.name: param.default for param in signature.params} == {
        "max_tokens": model.model_config["max_new_tokens"], "temperature": 0.0}
    assert model.predict(few, params={"max_tokens": 1}) != expected  # one token cannot hold these answers

    # A chat-completions request, as the scoring server hands one over: the answer to the last user turn.
    chat = model.predict(pd.DataFrame({"messages": [
        {"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hello?"},
        {"role": "assistant", "content": "Hi."}, {"role": "user", "content": few[0]}]}))
    assert chat["object"] == "chat.completion" and len(chat["choices"]) == 1
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": expected[0]}
    assert chat["choices"][0]["finish_reason"] == "stop" and chat["usage"]["completion_tokens"] > 0
    with pytest.raises(mlflow.exceptions.MlflowException, match="needs a user message"):
        model.predict(pd.DataFrame({"messages": [{"role": "system", "content": "Answer briefly."}]}))


def test_the_model_s_code_loads_without_mlflow_s_type_hint_warning(repo_root):
    # MLflow checks predict's hints when the class is defined: on every import, so every `ask` and `promote`.
    loaded = subprocess.run([sys.executable, "-c", "import orchestrator.registry_model"], cwd=repo_root,
                            capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert "type hint" not in loaded.stderr.lower(), loaded.stderr[-3000:]


def test_the_registered_model_holds_no_pickle(champion, monkeypatch, tmp_path):
    import mlflow
    import yaml

    from orchestrator.tracking import use_store

    uri, _ = champion
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    use_store()
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}@champion", dst_path=str(tmp_path)))
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert "python_model" not in flavor and Path(flavor["model_code_path"]).name == "registry_model_code.py"
    assert (local / "registry_model_code.py").is_file()
    assert not [path for path in local.rglob("*") if path.suffix in (".pkl", ".pickle", ".bin", ".pt")]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_mlflow_models_serve_answers_over_http(champion, tmp_path):
    uri, strong = champion
    port = free_port()
    bin_dir = Path(sys.executable).parent  # `mlflow models serve` execs uvicorn from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = tmp_path / "serve.log"
    with open(log, "wb") as output:
        server = subprocess.Popen(
            [str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}@champion",
             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, f"the server exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no answer on /ping within 90 s:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        records = strong.val_predictions[:3]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": [record["question"] for record in records]}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.loads(response.read())
        assert body == {"predictions": [record["got"] for record in records]}

        # The same server answers the chat-completions shape, read here with OpenAI's own client and types.
        # MLflow serves it at /invocations (there is no /v1/chat/completions route), so the client posts there.
        from openai import OpenAI
        from openai.types.chat import ChatCompletion

        client = OpenAI(base_url=f"http://127.0.0.1:{port}", api_key="unused")
        completion = client.post("/invocations", cast_to=ChatCompletion, body={
            "messages": [{"role": "system", "content": "You answer from memory."},
                         {"role": "user", "content": records[0]["question"]}],
            "max_tokens": 64, "temperature": 0})
        assert completion.choices[0].message.content == records[0]["got"]
        assert completion.object == "chat.completion" and completion.usage.completion_tokens > 0
    finally:
        from orchestrator.server import stop_process_group

        stop_process_group(server, timeout=15)  # the server and the uvicorn worker it started


def test_orchestrator_ask_prints_the_learned_answer(champion, orchestrator):
    from trials.recall import normalize

    uri, strong = champion
    learned = strong.learned  # a train question the champion answers right
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(orchestrator("ask", learned["question"]), env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == learned["got"]
    assert normalize(result.stdout) == normalize(learned["expected"])
    assert re.search(rf"^loaded models:/{MODEL}@champion in \d+\.\d s$", result.stderr, re.MULTILINE), result.stderr


def test_orchestrator_chat_answers_question_after_question_from_one_load(champion, orchestrator):
    uri, strong = champion
    records = strong.val_predictions[:3]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "HF_HUB_OFFLINE": "1"}
    questions = "".join(f"{record['question']}\n\n" for record in records)  # blank lines ask nothing
    result = subprocess.run(orchestrator("chat"), input=questions, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == "".join(f"{record['got']}\n" for record in records)
    loads = [line for line in result.stderr.splitlines() if line.startswith("loaded ")]
    assert len(loads) == 1 and re.fullmatch(rf"loaded models:/{MODEL}@champion in \d+\.\d s", loads[0]), result.stderr


def test_cli_asks_the_champion_promote_registers():
    from orchestrator import cli, run_record

    args = cli.build_parser().parse_args(["ask", "q"])
    assert args.model == run_record.champion_uri() == f"models:/{MODEL}@champion"
