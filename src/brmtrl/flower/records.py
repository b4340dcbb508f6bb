"""Typed access to the records of Flower messages (their values are unions of every record type)."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord

__all__ = ["array", "arrays_of", "config_of", "floats", "has", "ints", "metrics_of", "scalar", "tensor"]


def config_of(message: Message, key: str = "config") -> ConfigRecord:
    return message.content.config_records[key]


def arrays_of(message: Message, key: str = "arrays") -> ArrayRecord:
    return message.content.array_records[key]


def metrics_of(message: Message, key: str = "metrics") -> MetricRecord:
    return message.content.metric_records[key]


def has(message: Message, key: str) -> bool:
    return key in message.content


def ints(value: Any) -> list[int]:
    return [int(v) for v in cast(list, value)]


def floats(value: Any) -> list[float]:
    return [float(v) for v in cast(list, value)]


def scalar(value: Any) -> Any:
    """A record value known to be a scalar (int, float, str, bool)."""
    return value


def tensor(record: ArrayRecord, key: str) -> torch.Tensor:
    """A flat tensor from ``record[key]`` (copied out of Flower's buffer)."""
    return torch.from_numpy(np.ascontiguousarray(record[key].numpy()))


def array(t: torch.Tensor) -> Array:
    return Array(np.ascontiguousarray(t.detach().cpu().numpy()))
