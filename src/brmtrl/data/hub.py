"""Online sources: a dataset repository's parquet files on the Hugging Face Hub, downloaded (and cached)
by ``huggingface_hub``, then read by the same code that reads a local copy; a clear error, naming
``dataset.root``, when the hub cannot be reached.

The hub stores a dataset repository as parquet shards (``uoft-cs/cifar10``:
``plain_text/{train,test}-00000-of-00001.parquet``; ``flwrlabs/femnist``: ``data/train-*.parquet``), an
image column as ``struct<bytes, path>`` with the encoded image in ``bytes``: pyarrow reads them as they
are, so the online path needs neither the ``datasets`` library nor pandas. ``huggingface_hub`` honours the
usual settings (``HF_HOME``, ``HF_ENDPOINT`` for a mirror, ``HF_TOKEN``, ``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

from pathlib import Path

from .federated import DataError

__all__ = ["fetch_parquet"]


def fetch_parquet(repo_id: str, pattern: str, dataset_label: str, example_root: str) -> list[Path]:
    """The local paths, in name order, of dataset repository ``repo_id``'s files matching ``pattern`` (a
    glob relative to the repository root, such as ``"plain_text/train-*.parquet"``), downloaded into
    ``huggingface_hub``'s cache on first use. Failing to reach the hub, or a repository without such
    files, is a :class:`DataError` that names the repository and ``dataset.root``."""
    hint = f"set dataset.root to a local copy (for example dataset.root={example_root})"
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - huggingface_hub is a dependency
        raise DataError(f"loading {dataset_label} online needs the 'huggingface_hub' package ({exc}); {hint}") from None
    try:
        folder = snapshot_download(repo_id=repo_id, repo_type="dataset", allow_patterns=[pattern])
    except Exception as exc:  # network, hub or cache errors all end the same way for the user
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(f"could not load {dataset_label} from the Hugging Face Hub ({repo_id!r}): "
                        f"{type(exc).__name__}: {first}; {hint}") from None
    files = sorted(Path(folder).glob(pattern))
    if not files:
        raise DataError(f"the Hugging Face Hub's {repo_id!r} has no files matching {pattern!r} "
                        f"(has the repository changed its layout?); {hint}")
    return files
