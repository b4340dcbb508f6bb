"""Online sources: the Hugging Face Hub through ``datasets.load_dataset``, with a clear error when
the hub cannot be reached."""

from __future__ import annotations

from typing import Any

from .federated import DataError

__all__ = ["load_hub"]


def load_hub(repo_id: str, dataset_label: str, example_root: str, **kwargs: Any) -> Any:
    """Download ``repo_id``; on failure say so and name ``dataset.root``."""
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise DataError(f"loading {dataset_label} online needs the 'datasets' package: {exc}") from None
    try:
        return datasets.load_dataset(repo_id, **kwargs)
    except Exception as exc:  # network, hub or cache errors all end the same way for the user
        raise DataError(
            f"could not load {dataset_label} from the Hugging Face Hub ({repo_id!r}): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
            f"set dataset.root to a local copy (for example dataset.root={example_root})"
        ) from None
