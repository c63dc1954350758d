"""Config loading: strict keys, every problem at once with file:line and key path, --set, paths."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from orchestrator.config import ExperimentConfig, load_experiment
from trials.config import ConfigError, TrialConfig, load_config
from trials.methods import METHOD_NAMES
from trials.methods.lora import LoraMethod
from trials.methods.prefix import PrefixMethod

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CONFIGS = sorted((REPO_ROOT / "configs").glob("*.yaml"))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems(path, overrides=(), model_cls=TrialConfig) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides, model_cls)
    for problem in caught.value.problems:
        assert problem in str(caught.value)
    return caught.value.problems


def one(found: list[str], prefix: str) -> str:
    """The single problem starting with `prefix` (e.g. "file:7: method.r:")."""
    matches = [p for p in found if p.startswith(prefix)]
    assert len(matches) == 1, (prefix, found)
    return matches[0]


MINIMAL = """\
data:
  qa: qa.jsonl
"""


def test_minimal_config_gets_defaults(tmp_path):
    config = load_config(write(tmp_path / "c.yaml", MINIMAL))
    assert config.model == "embedded:tiny-llama"
    assert isinstance(config.method, LoraMethod) and config.method.r == 8
    assert config.data.qa == (tmp_path / "qa.jsonl").resolve()
    assert config.data.documents == []
    assert config.training.epochs == 10 and config.training.include_documents is True


def test_all_problems_reported_at_once_with_file_line_and_key(tmp_path):
    path = write(tmp_path / "c.yaml", """\
        model: embedded:tiny-llama
        data:
          qa: qa.jsonl
          colour: blue
        method:
          name: lora
          r: 0
          dropout: 1.0
          learning_rate: -1
        training:
          epochs: 3
          bogus: 1
          warmup_ratio: -0.5
        flavour: vanilla
        """)
    found = problems(path)
    assert "unknown key" in one(found, f"{path}:4: data.colour:")
    assert "greater than 0" in one(found, f"{path}:7: method.r:")
    assert "less than 1" in one(found, f"{path}:8: method.dropout:")
    assert "greater than 0" in one(found, f"{path}:9: method.learning_rate:")
    assert "unknown key" in one(found, f"{path}:12: training.bogus:")
    one(found, f"{path}:13: training.warmup_ratio:")
    assert "unknown key" in one(found, f"{path}:14: flavour:")
    assert len(found) == 7, found


@pytest.mark.parametrize(
    "key, value, line_text",
    [
        ("r", "0", "greater than 0"),
        ("r", "-4", "greater than 0"),
        ("dropout", "1.0", "less than 1"),
        ("dropout", "-0.1", "greater than or equal to 0"),
        ("learning_rate", "0", "greater than 0"),
        ("learning_rate", "-2.0e-4", "greater than 0"),
        ("alpha", "0", "greater than 0"),
        ("target_modules", "[]", "at least 1"),
    ],
)
def test_lora_bounds(tmp_path, key, value, line_text):
    path = write(tmp_path / "c.yaml", f"""\
        data:
          qa: qa.jsonl
        method:
          name: lora
          {key}: {value}
        """)
    assert line_text in one(problems(path), f"{path}:5: method.{key}:")


@pytest.mark.parametrize("dropout", [0.0, 0.5, 0.999])
def test_dropout_inside_range_is_accepted(tmp_path, dropout):
    path = write(tmp_path / "c.yaml", MINIMAL + f"method:\n  name: lora\n  dropout: {dropout}\n")
    assert load_config(path).method.dropout == dropout


def test_lora_keys_on_a_prefix_trial_are_unknown(tmp_path):
    path = write(tmp_path / "c.yaml", """\
        data:
          qa: qa.jsonl
        method:
          name: prefix
          r: 8
          dropout: 0.1
          target_modules: [q_proj]
          num_virtual_tokens: 0
        """)
    found = problems(path)
    assert "not valid for this method" in one(found, f"{path}:5: method.r:")
    assert "not valid for this method" in one(found, f"{path}:6: method.dropout:")
    assert "not valid for this method" in one(found, f"{path}:7: method.target_modules:")
    assert "greater than 0" in one(found, f"{path}:8: method.num_virtual_tokens:")
    assert len(found) == 4, found
    # The union's tag ("prefix") is not a key the user wrote: it never appears in a key path.
    assert not any("method.prefix" in p for p in found)


def test_prefix_keys_on_a_lora_trial_are_unknown(tmp_path):
    path = write(tmp_path / "c.yaml", MINIMAL + "method:\n  num_virtual_tokens: 10\n")
    assert "unknown key" in one(problems(path), f"{path}:4: method.num_virtual_tokens:")


def test_prefix_method_loads(tmp_path):
    path = write(tmp_path / "c.yaml", MINIMAL + "method:\n  name: prefix\n  num_virtual_tokens: 12\n")
    method = load_config(path).method
    assert isinstance(method, PrefixMethod) and method.num_virtual_tokens == 12


def test_unknown_method_name(tmp_path):
    path = write(tmp_path / "c.yaml", MINIMAL + "method:\n  name: bitfit\n")
    found = problems(path)
    assert len(found) == 1 and "one of " + ", ".join(METHOD_NAMES) in one(found, f"{path}:4: method.name:")


def test_method_without_name_is_lora(tmp_path):
    path = write(tmp_path / "c.yaml", MINIMAL + "method:\n  r: 4\n")
    method = load_config(path).method
    assert isinstance(method, LoraMethod) and method.r == 4
    # --set on a config with no method section builds the section without a name, too.
    method = load_config(write(tmp_path / "d.yaml", MINIMAL), ["method.r=2"]).method
    assert isinstance(method, LoraMethod) and method.r == 2


def test_method_that_is_not_a_mapping(tmp_path):
    path = write(tmp_path / "c.yaml", MINIMAL + "method: lora\n")
    assert len(problems(path)) == 1 and problems(path)[0].startswith(f"{path}:3: method:")


def test_missing_required_qa_and_blank_model(tmp_path):
    path = write(tmp_path / "c.yaml", "model: '  '\ndata:\n  max_length: 64\n")
    found = problems(path)
    one(found, f"{path}:1: model:")
    assert "required" in one(found, f"{path}:2: data.qa:").lower()
    assert len(found) == 2


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path / "c.yaml", "data:\n  qa: qa.jsonl\nmethod: [unclosed\ntraining:\n  epochs: 2\n")
    found = problems(path)
    assert len(found) == 1 and found[0].startswith(f"{path}:") and "not valid YAML" in found[0]
    assert found[0].split(":")[1].isdigit()


def test_config_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"data:\n  qa: qa.jsonl\n# caf\xe9 in Latin-1\n")
    assert problems(path) == [f"{path}:3: not UTF-8 text (byte 0xe9)"]


def test_top_level_must_be_a_mapping(tmp_path):
    path = write(tmp_path / "c.yaml", "- data\n- method\n")
    assert problems(path) == [f"{path}:1: the top level must be a mapping of keys"]


def test_missing_config_file(tmp_path):
    found = problems(tmp_path / "nope.yaml")
    assert len(found) == 1 and found[0].startswith(f"{tmp_path / 'nope.yaml'}: ")


# --set overrides ----------------------------------------------------------------------------


def test_set_overrides_are_dotted_and_yaml_typed(tmp_path):
    path = write(tmp_path / "c.yaml", MINIMAL + "method:\n  r: 16\ntraining:\n  epochs: 20\n")
    config = load_config(path, [
        "method.r=4",
        "method.alpha=8.5",
        "method.target_modules=[q_proj, k_proj]",
        "training.epochs=3",
        "training.bf16=false",
        "training.include_documents=no",
        "training.lr_scheduler=cosine",
        "eval.max_new_tokens=12",
    ])
    assert config.method.r == 4 and isinstance(config.method.r, int)
    assert config.method.alpha == 8.5
    assert config.method.target_modules == ["q_proj", "k_proj"]
    assert config.training.epochs == 3
    assert config.training.bf16 is False
    assert config.training.include_documents is False
    assert config.training.lr_scheduler == "cosine"
    assert config.eval.max_new_tokens == 12


def test_set_can_replace_a_whole_section(tmp_path):
    path = write(tmp_path / "c.yaml", MINIMAL + "method:\n  name: lora\n  r: 16\n")
    config = load_config(path, ["method={name: prefix, num_virtual_tokens: 5}"])
    assert isinstance(config.method, PrefixMethod) and config.method.num_virtual_tokens == 5


def test_set_errors_name_the_override(tmp_path):
    path = write(tmp_path / "c.yaml", MINIMAL + "method:\n  r: 16\ntraining:\n  epochs: 2\n")
    found = problems(path, ["method.r=0", "training.epochs=-1", "training.colour=red"])
    # "--set method.r: ..." names the key already (the key path may or may not be repeated after it).
    assert "greater than 0" in one(found, "--set method.r: ")
    assert "greater than 0" in one(found, "--set training.epochs: ")
    assert "unknown key" in one(found, "--set training.colour: ")
    assert not any(".yaml" in p for p in found), found
    assert len(found) == 3, found


def test_file_errors_and_set_errors_together(tmp_path):
    path = write(tmp_path / "c.yaml", MINIMAL + "method:\n  r: 16\n  dropout: 2\n")
    found = problems(path, ["method.r=0"])
    one(found, "--set method.r: ")
    one(found, f"{path}:5: method.dropout:")
    assert len(found) == 2


def test_set_method_errors_name_the_set_not_the_method_section_s_line(tmp_path):
    path = write(tmp_path / "c.yaml", MINIMAL + "method:\n  name: ia3\n")
    # The discriminator's error is about method.name, which the --set changed.
    found = problems(path, ["method.name=bitfit"])
    assert len(found) == 1 and "one of " + ", ".join(METHOD_NAMES) in one(found, "--set method.name: ")
    # A method's own check (loc: the method section) blames what --set changed inside it.
    found = problems(path, ["method.feedforward_modules=[q_proj]"])
    assert len(found) == 1 and "must also be in target_modules" in one(found, "--set method.feedforward_modules: ")
    found = problems(path, ["method.target_modules=[q_proj]", "method.feedforward_modules=[o_proj]"])
    one(found, "--set method.target_modules, --set method.feedforward_modules: method: ")
    assert not any(".yaml" in p for p in found), found
    # No method section in the file: still the --set, not the file.
    found = problems(write(tmp_path / "d.yaml", MINIMAL), ["method.name=bitfit"])
    one(found, "--set method.name: ")
    # A key missing from a section is the file's, whatever --set changed beside it.
    found = problems(write(tmp_path / "e.yaml", "data:\n  documents: []\n"), ["data.max_length=64"])
    assert "required" in one(found, f"{tmp_path / 'e.yaml'}:1: data.qa:").lower()


def test_set_section_replacement_takes_over_the_origin(tmp_path):
    path = write(tmp_path / "c.yaml", MINIMAL + "method:\n  name: lora\n  r: 16\n")
    found = problems(path, ["method={name: prefix, r: 4}"])
    assert "not valid for this method" in one(found, "--set method: method.r:")
    assert len(found) == 1


def test_switching_method_with_set_reports_file_keys_at_their_lines(tmp_path):
    path = write(tmp_path / "c.yaml", MINIMAL + "method:\n  name: prefix\n  num_virtual_tokens: 8\n")
    found = problems(path, ["method.name=lora"])
    assert "not valid for this method" in one(found, f"{path}:5: method.num_virtual_tokens:")


@pytest.mark.parametrize("assignment", ["method.r", "=3", "."])
def test_malformed_set(tmp_path, assignment):
    path = write(tmp_path / "c.yaml", MINIMAL)
    found = problems(path, [assignment])
    assert len(found) == 1 and found[0].startswith(f"--set {assignment}:") and "key=value" in found[0]


def test_set_into_a_scalar_is_an_error(tmp_path):
    path = write(tmp_path / "c.yaml", "model: embedded:tiny-llama\n" + MINIMAL)
    found = problems(path, ["model.name=x"])
    assert len(found) == 1 and found[0].startswith("--set model.name=x:") and "not a mapping" in found[0]


# Paths -------------------------------------------------------------------------------------


def test_paths_in_a_file_resolve_against_the_file(tmp_path, monkeypatch):
    path = write(tmp_path / "configs" / "nested" / "c.yaml", """\
        data:
          qa: ../../data/qa.jsonl
          documents: [docs/a.txt, ../b.txt]
        """)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(path)
    assert config.data.qa == (tmp_path / "data" / "qa.jsonl").resolve()
    assert config.data.documents == [
        (tmp_path / "configs" / "nested" / "docs" / "a.txt").resolve(),
        (tmp_path / "configs" / "b.txt").resolve(),
    ]
    assert all(p.is_absolute() for p in [config.data.qa, *config.data.documents])


def test_config_given_by_relative_path(tmp_path, monkeypatch):
    write(tmp_path / "configs" / "c.yaml", "data:\n  qa: ../data/qa.jsonl\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("configs/c.yaml"))
    assert config.data.qa == (tmp_path / "data" / "qa.jsonl").resolve()


def test_set_paths_resolve_against_the_current_directory(tmp_path, monkeypatch):
    path = write(tmp_path / "configs" / "c.yaml", "data:\n  qa: ../data/qa.jsonl\n  documents: [x.txt]\n")
    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    config = load_config(path, ["data.qa=mine/qa.jsonl", "data.documents=[d1.txt, sub/d2.txt]"])
    assert config.data.qa == (cwd / "mine" / "qa.jsonl").resolve()
    assert config.data.documents == [(cwd / "d1.txt").resolve(), (cwd / "sub" / "d2.txt").resolve()]


def test_absolute_paths_are_kept(tmp_path):
    qa = (tmp_path / "abs" / "qa.jsonl").resolve()
    path = write(tmp_path / "configs" / "c.yaml", f"data:\n  qa: {qa}\n")
    assert load_config(path).data.qa == qa
    assert load_config(path, [f"data.qa={qa}"]).data.qa == qa


# Experiment configs --------------------------------------------------------------------------


def test_sweep_sections_belong_to_the_experiment_not_the_trial(tmp_path):
    path = write(tmp_path / "c.yaml", MINIMAL + "sweep:\n  num_samples: 3\n")
    assert "unknown key" in one(problems(path), f"{path}:3: sweep:")
    experiment = load_experiment(path)
    assert experiment.sweep.num_samples == 3
    trial = experiment.trial_config()
    assert type(trial) is TrialConfig and trial.data == experiment.data


def test_experiment_config_errors_have_lines_too(tmp_path):
    path = write(tmp_path / "c.yaml", MINIMAL + "sweep:\n  num_samples: 0\n  asha:\n    grace: 2\n")
    with pytest.raises(ConfigError) as caught:
        load_experiment(path)
    found = caught.value.problems
    one(found, f"{path}:4: sweep.num_samples:")
    assert "unknown key" in one(found, f"{path}:6: sweep.asha.grace:")


def test_demo_config_values(repo_root):
    config = load_experiment(repo_root / "configs" / "demo.yaml")
    assert config.model == "embedded:tiny-llama"
    assert config.data.qa == (repo_root / "data" / "demo" / "qa.jsonl").resolve()
    assert all(p.exists() for p in [config.data.qa, *config.data.documents])
    assert isinstance(config.method, LoraMethod)


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=[p.name for p in SHIPPED_CONFIGS])
def test_every_shipped_config_loads(path, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # a config must not depend on the directory it is run from
    config = load_experiment(path)
    assert isinstance(config, ExperimentConfig)
    assert isinstance(config.trial_config(), TrialConfig)


def test_there_are_shipped_configs():
    assert any(p.name == "demo.yaml" for p in SHIPPED_CONFIGS)


@pytest.mark.parametrize("assignment", ["training.epochs=[1,", "method={r: 1", "model=a: b: c"])
def test_set_value_that_is_not_yaml(tmp_path, assignment):
    path = write(tmp_path / "c.yaml", MINIMAL)
    found = problems(path, [assignment])
    assert len(found) == 1 and found[0].startswith(f"--set {assignment}: not valid YAML: "), found
    assert "\n" not in found[0]


def test_trial_does_not_apply_sweep_only_rules(repo_root):
    # With a grace period of 2 epochs, a one-epoch trial is fine, a one-epoch sweep is not.
    config = load_experiment(repo_root / "configs" / "demo.yaml", ["training.epochs=1", "sweep.asha.grace_period=2"])
    assert config.trial_config().training.epochs == 1
    assert config.sweep_problems("demo.yaml") == [
        "demo.yaml: sweep.asha.grace_period (2) must not exceed training.epochs (1)"]


def test_eval_objective_defaults_to_exact_recall_and_takes_every_metric(tmp_path):
    from typing import get_args

    from trials.config import OBJECTIVE_METRICS, EvalConfig

    path = write(tmp_path / "c.yaml", MINIMAL)
    assert load_config(path).eval.objective == "exact_recall"
    choices = get_args(EvalConfig.model_fields["objective"].annotation)
    assert set(choices) == set(OBJECTIVE_METRICS)  # each choice names the metric it optimises
    for choice in choices:
        assert load_config(path, [f"eval.objective={choice}"]).eval.objective == choice


def test_a_bad_eval_objective_names_the_file_line_and_key(tmp_path):
    path = write(tmp_path / "c.yaml", """\
        data:
          qa: qa.jsonl
        eval:
          batch_size: 8
          objective: bleu
        """)
    found = one(problems(path), f"{path}:5: eval.objective:")
    assert "'exact_recall', 'contains_recall', 'token_f1' or 'rouge_l'" in found
    assert one(problems(path, ["eval.objective=rouge"]), "--set eval.objective:")
