"""The registered model: a trained adapter that answers questions, as an MLflow pyfunc model.

Why pyfunc and not the `transformers` flavour:
- what a trial trains is a peft adapter (LoRA or prefix), not a model: serving it means loading
  the base model and attaching the adapter, which the transformers flavour does not do for us;
- an answer is only right when the question is formatted exactly as in training
  (`trials.formatting.prompt_ids`: chat template or `Question: ...\\nAnswer:`, BOS rules) and the
  generation is cut exactly as in scoring (`trials.recall.cut_answer`); a transformers pipeline
  formats and decodes its own way, so it would answer differently from what we measured;
- the embedded tiny base model is built locally and exists on no hub: it must travel inside the
  model, while a hub (or local-path) base model is only referenced by its name.

So this wrapper stores the adapter directory, the trial's `trial_config.json` and, for the
embedded base only, the base model directory; `predict` answers through
`trials.recall.generate_token_ids` + `cut_answer`, the very code that scored the trial, to a list of
questions or to a chat-completions request (`messages`, `max_tokens`, `temperature`) with a
chat-completion object.

No pickled code: the model is logged as MLflow's models-from-code. Each version stores the source
file `registry_model_code.py` (which builds a RecallModel), not a cloudpickle of one, and MLflow
runs that file when the version is loaded; everything else it holds is safetensors, JSON and text.
(Versions registered before this hold a pickle, and load only where MLflow still allows it:
MLFLOW_ALLOW_PICKLE_DESERIALIZATION.)

Serving: that file imports `orchestrator.registry_model.RecallModel`, and the code that answers
lives in `trials`. Both must be importable where the model is loaded: `pip install` this project
(it is, in the venv `make install` builds) and serve with
`mlflow models serve -m models:/recall-champion@champion --env-manager local`.
"""

from __future__ import annotations

import json
import time
import uuid
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema


# Artifact keys of the logged model.
ADAPTER, TRIAL_CONFIG, BASE_MODEL, KNOWLEDGE = "adapter", "trial_config", "base_model", "knowledge"


class RecallModel(mlflow.pyfunc.PythonModel):
    """Answers questions with one trained adapter, exactly as the trial that trained it did."""

    def load_context(self, context) -> None:
        from trials.config import TrialConfig
        from trials.evaluate import load_trained

        config = TrialConfig.model_validate_json(Path(context.artifacts[TRIAL_CONFIG]).read_text(encoding="utf-8"))
        options = context.model_config or {}
        self.model, self.tokenizer, self.device, self.bf16 = load_trained(
            Path(context.artifacts[ADAPTER]), serving_config(config), base_path=context.artifacts.get(BASE_MODEL))
        self.batch_size = int(options.get("batch_size", config.eval.batch_size))
        self.max_new_tokens = int(options["max_new_tokens"])
        self.base_model = config.model  # a chat completion's `model`

    # The hint is a DataFrame, not MLflow's list[...] hints: those would make the schema, and a list schema
    # turns a chat-completions body away. With it MLflow validates against `signature()` (given at logging)
    # and hands predict a table: one column of questions ({"inputs": [...]} over HTTP, a list in Python,
    # dataframe_split), or a `messages` column, one row a message (a JSON body holding `messages`).
    def predict(self, context, model_input: pd.DataFrame, params=None):
        """Questions in, one answer each out; or a chat-completions request, answered with a
        chat-completion object."""
        params = params or {}
        max_tokens = int(params.get("max_tokens") or self.max_new_tokens)
        temperature = float(params.get("temperature") or 0.0)
        if hasattr(model_input, "columns") and "messages" in model_input.columns:
            return self._chat(list(model_input["messages"]), max_tokens, temperature)
        # A list: a version registered before the signature, whose schema MLflow took from list[str] hints.
        questions = list(model_input.iloc[:, 0]) if hasattr(model_input, "iloc") else list(model_input)
        return [self._text(ids) for ids in self._generate(questions, max_tokens, temperature)]

    def _text(self, ids: list[int]) -> str:
        from trials.recall import cut_answer

        return cut_answer(self.tokenizer.decode(ids, skip_special_tokens=True))

    def _generate(self, questions: list[str], max_tokens: int, temperature: float) -> list[list[int]]:
        from trials.recall import generate_token_ids

        if not questions:
            return []
        return generate_token_ids(self.model, self.tokenizer, questions, batch_size=self.batch_size,
                                  max_new_tokens=max_tokens, device=self.device, bf16=self.bf16,
                                  temperature=temperature)

    def _chat(self, messages: list[dict], max_tokens: int, temperature: float) -> dict:
        """The OpenAI chat-completion shape. The answer is to the last user message, formatted as the
        trial trained and scored one question: earlier turns and system messages are not part of that
        format, so they are read past, not fed to the model."""
        from trials.formatting import prompt_ids

        asked = [message.get("content") for message in messages if message.get("role") == "user"]
        if not asked or not isinstance(asked[-1], str) or not asked[-1].strip():
            raise mlflow.exceptions.MlflowException.invalid_parameter_value(
                "messages: a chat request needs a user message with text content")
        (ids,) = self._generate([asked[-1]], max_tokens, temperature)
        finished = self.tokenizer.eos_token_id in ids
        prompt_tokens = len(prompt_ids(self.tokenizer, asked[-1]))
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.base_model,
                "choices": [{"index": 0, "finish_reason": "stop" if finished else "length",
                             "message": {"role": "assistant",
                                         "content": self._text(ids)}}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(ids),
                          "total_tokens": prompt_tokens + len(ids)}}


def read_version(model_dir: Path) -> tuple[dict[str, Path], dict]:
    """A downloaded version's artifacts (key -> where log_recall_model put it, from the model's own
    description of itself) and its model_config (max_new_tokens, batch_size)."""
    flavor = mlflow.models.Model.load(str(model_dir)).flavors["python_function"]
    return {key: model_dir / entry["path"] for key, entry in flavor["artifacts"].items()}, flavor["config"]


def serving_config(config):
    """A trial config as it is served, not where it was trained: on the GPU if there is one, else the CPU;
    in the trial's precision where that device has it, so the answers are the ones the trial scored."""
    from trials.model import pick_device, use_bf16

    serving = config.training.model_copy(update={"device": "auto"})
    try:
        use_bf16(serving, pick_device(serving))
    except ValueError:  # bf16: true, served on a GPU without bf16
        serving = serving.model_copy(update={"bf16": False})
    return config.model_copy(update={"training": serving})


def signature(max_new_tokens: int) -> ModelSignature:
    """The version's schema: questions (strings) in, answers (strings) out, and the request options a
    chat client sends, `max_tokens` (default: the trial's generation budget) and `temperature` (default
    0: greedy, as every score was measured)."""
    return ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("string")]),
                          params=ParamSchema([ParamSpec("max_tokens", "long", int(max_new_tokens)),
                                              ParamSpec("temperature", "double", 0.0)]))


def _pip_requirements() -> list[str]:
    """What the model needs besides this project itself (which `--env-manager local` provides)."""
    pins = []
    for package in ("mlflow", "torch", "transformers", "tokenizers", "peft", "pydantic", "pyyaml", "pandas"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


def log_recall_model(adapter_dir: Path, trial_config_path: Path, *, max_new_tokens: int, name: str = "model",
                     knowledge: Path | None = None, run_id: str | None = None):
    """Log a trained adapter as a pyfunc model of `run_id` (the trial run that trained it; None: the
    active run), without reopening that run; returns mlflow's ModelInfo.

    `max_new_tokens` is fixed here (the trial's generation budget, from its data), so answering
    needs no data files.
    """
    from trials.config import EMBEDDED_MODEL, TrialConfig
    from trials.model import resolve_model

    config = TrialConfig.model_validate_json(Path(trial_config_path).read_text(encoding="utf-8"))
    artifacts = {ADAPTER: str(adapter_dir), TRIAL_CONFIG: str(trial_config_path)}
    if knowledge is not None:  # the facts this version knows: what an incremental sweep from it keeps
        artifacts[KNOWLEDGE] = str(knowledge)
    if config.model == EMBEDDED_MODEL:  # built here, on no hub: bundle it
        artifacts[BASE_MODEL] = resolve_model(config.model)
    # pyfunc.log_model is Model.log for the active run; Model.log takes the run as an argument, so a
    # finished trial run gets its model (and the registry's source link) with its status and times untouched.
    # No input example: MLflow would load the model and answer it at logging, to check what the signature
    # already says; its warning that one is missing is left out of promote's output.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*An input example was not provided", category=UserWarning)
        return mlflow.models.Model.log(
            artifact_path=None,  # positional in its signature, deprecated for `name`
            name=name,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            python_model=str(Path(__file__).with_name("registry_model_code.py")),  # models-from-code: no pickle
            artifacts=artifacts,
            model_config={"max_new_tokens": int(max_new_tokens), "batch_size": config.eval.batch_size},
            signature=signature(max_new_tokens),
            pip_requirements=_pip_requirements(),
            metadata={"base_model": config.model, "method": config.method.name,
                      "base_bundled": BASE_MODEL in artifacts, "trial_config": json.loads(config.model_dump_json())},
        )
