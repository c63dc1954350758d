"""The registered model's code, logged as MLflow's models-from-code: MLflow stores this file, not a
pickle, with every version and runs it when the version is loaded (orchestrator.registry_model)."""

import mlflow

from orchestrator.registry_model import RecallModel

mlflow.models.set_model(RecallModel())
