"""Where tensors live and what each device can do: choosing the device, the device the server step
computes on, determinism and honest timings.

* :func:`resolve_device`: the ``device`` setting (``auto``: CUDA when present, then Apple's MPS, else
  the CPU), checked against this machine (a ``cuda:N`` beyond its GPUs is a config error).
* :func:`aggregation_device`: where the server step screens and aggregates updates. The rules work in
  float64, which MPS lacks, so updates that live on MPS are combined on the CPU; CUDA and the CPU keep
  them where they are.
* :func:`configure_determinism`: on CUDA, cuDNN's deterministic convolution algorithms and no
  autotuning, so that the same seed on the same machine gives the same numbers (README, determinism).
* :func:`synchronize`: wait for the device's queued kernels, so that a wall-clock reading measures
  the work it claims to (CUDA and MPS run asynchronously).
"""

from __future__ import annotations

import torch

from .errors import ConfigError

__all__ = ["aggregation_device", "configure_determinism", "for_aggregation", "resolve_device", "synchronize"]


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str, *, visible_only: bool = False) -> torch.device:
    """``auto`` takes CUDA when present, then Apple's MPS, else the CPU. ``cuda``/``cuda:N`` need CUDA and
    N below the number of GPUs this process sees; ``visible_only`` (a Flower ClientApp, which Ray shows
    only the GPU it was given) maps any ``cuda:N`` to the first visible GPU instead."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"config key 'device' = {name!r} but CUDA is not available on this machine; use 'auto' "
                              "or 'cpu'")
        index = int(name.split(":", 1)[1]) if ":" in name else None
        count = torch.cuda.device_count()
        if index is not None and index >= count:
            if visible_only:
                return torch.device("cuda", 0)
            raise ConfigError(f"config key 'device' = {name!r} but this machine has {count} GPU"
                              f"{'' if count == 1 else 's'} (cuda:0 .. cuda:{count - 1}); use one of them or 'auto'")
    if name == "mps" and not _mps_available():
        raise ConfigError("config key 'device' = 'mps' but MPS is not available on this machine; use 'auto' or 'cpu'")
    return torch.device(name)


def aggregation_device(device: torch.device | str) -> torch.device:
    """Where updates living on ``device`` are screened and combined: the CPU for MPS (no float64 there),
    ``device`` itself otherwise."""
    device = torch.device(device)
    return torch.device("cpu") if device.type == "mps" else device


def for_aggregation(update: object) -> object:
    """An update moved to :func:`aggregation_device` of its device (anything but a tensor unchanged: the
    server's screening says what is wrong with it)."""
    if isinstance(update, torch.Tensor):
        return update.to(aggregation_device(update.device))
    return update


def configure_determinism(device: torch.device) -> None:
    """On CUDA: deterministic cuDNN convolutions, no cuDNN autotuning (which picks algorithms by timing,
    so differently from run to run). TF32 stays torch's default (on for convolutions, off for matrix
    products): it changes CPU/GPU agreement, not GPU repeatability (README, determinism)."""
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def synchronize(device: torch.device) -> None:
    """Wait for the kernels queued on ``device`` (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
