"""Runs many trials: config, search space, Ray Tune sweep, MLflow tracking, promotion, serving."""
