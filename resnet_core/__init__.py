"""resnet_core: the ResNet papers' models, data and training loop in pure PyTorch.

Never imports ray, mlflow, yaml or pydantic: it runs and tests without the orchestrator.
"""
from .analysis import count_macs, count_params, describe_model, layer_responses
from .data import DataConfig, DataUnavailableError, load_splits
from .errors import ConfigError
from .metrics import Status
from .resnet import ModelConfig, ResNet, build_model
from .train import RunConfig, TrainConfig, Trainer, train

__all__ = [
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
    "load_splits",
    "train",
]
