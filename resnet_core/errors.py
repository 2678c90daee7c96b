"""The error types for bad input, shared by every layer that validates it: a bad setting, and
data that cannot be had, and a torch without an op we rely on. Torch-free, like the settings:
the CLI catches them without importing torch."""

from __future__ import annotations

__all__ = ["ConfigError", "DataUnavailableError", "TorchOpMissing"]


class ConfigError(ValueError):
    """A setting with a bad value. ``field`` is the dotted key users write (``model.depth``),
    so the CLI and the sweep validator can point at the flag or YAML line."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message

    def __reduce__(self):  # picklable: Ray sends a trial's exception to the driver
        return (type(self), (self.field, self.reason))


def choice_error(field: str, value: object, choices) -> ConfigError:
    shown = ", ".join(str(c) for c in choices)
    return ConfigError(field, f"{value!r} is not one of: {shown}")


class DataUnavailableError(RuntimeError):
    """The dataset's files are not on disk (or not in the layout expected) and could not be
    downloaded: one line naming the folder or file (a runtime failure, exit code 1)."""


class TorchOpMissing(RuntimeError):
    """A private torch op this package relies on is not in the installed torch
    (resnet_core.torch_compat raises it, naming the versions)."""
