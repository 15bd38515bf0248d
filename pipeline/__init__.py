"""Orchestration of the HEAT experiments: config, Ray stages, DeepSpeed training, MLflow, reports.

Everything that talks to Ray, DeepSpeed or MLflow lives here; the models are in `heat`.
"""
