"""resnet_core: the ResNet papers' models, data and training loop in pure PyTorch.

Never imports ray, mlflow, yaml or pydantic: it runs and tests without the orchestrator. Its
names load on first use (PEP 562), so the settings (resnet_core.config) come without torch.
"""

from __future__ import annotations

import importlib

__all__ = [
    "ArrayTrainer",
    "ConfigError",
    "DataConfig",
    "DataUnavailableError",
    "ModelConfig",
    "ResNet",
    "RunConfig",
    "Status",
    "TrainConfig",
    "Trainer",
    "build_model",
    "count_macs",
    "count_params",
    "describe_model",
    "layer_responses",
    "load_export",
    "load_model",
    "load_splits",
    "train",
    "train_array",
]

_HOMES = {
    "ConfigError": "errors",
    "DataUnavailableError": "errors",
    "Status": "metrics",
    "DataConfig": "config",
    "ModelConfig": "config",
    "RunConfig": "config",
    "TrainConfig": "config",
    "load_splits": "data",
    "ResNet": "resnet",
    "build_model": "resnet",
    "Trainer": "train",
    "train": "train",
    "ArrayTrainer": "array",
    "train_array": "array",
    "count_macs": "analysis",
    "count_params": "analysis",
    "describe_model": "analysis",
    "layer_responses": "analysis",
    "load_export": "export",  # an exported model (`resnet-sweep export`) and what its file says
    "load_model": "export",  # the one-call loader: the exported model, in eval mode
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
