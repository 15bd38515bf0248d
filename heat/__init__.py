"""HEAT: attention variants and transformer models in plain, single-device PyTorch.

This package never imports ray, deepspeed, mlflow or datasets (a test enforces it); orchestration
lives in `pipeline`.
"""

__version__ = "0.1.0"
