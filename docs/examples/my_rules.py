"""A user's own aggregator, attack, pre-aggregation step and local update rule for brmtrl
(docs/extending.md). Put this file's folder on PYTHONPATH and name them in a config:
aggregator.name = "my_rules:coordinate_trimmed_mean", attack.name = "my_rules:scaled_noise",
aggregator.pre = ["my_rules:clip_to_median_norm"], algorithm.name = "my_rules:rep_then_head"."""

import torch


def coordinate_trimmed_mean(x: torch.Tensor, f: int = 0) -> torch.Tensor:
    """Per coordinate, drop the f smallest and f largest values, average the rest. brmtrl passes the
    f its server assumes (aggregator.byzantine_fraction / aggregator.f)."""
    n = x.shape[0]
    k = min(f, (n - 1) // 2)
    return x.sort(dim=0).values[k:n - k].mean(dim=0)


def scaled_noise(update: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """What a Byzantine client sends instead of its honest update: noise as large as the update."""
    noise = torch.randn(update.shape, generator=generator, dtype=update.dtype).to(update.device)
    return noise * update.norm() / noise.norm()


def clip_to_median_norm(x: torch.Tensor) -> torch.Tensor:
    """A pre-aggregation step: scale every update down to at most the median of the updates' norms. One
    row per client comes out, so whatever the rule after it says of a row is said of that client."""
    norms = x.norm(dim=1, keepdim=True)
    return x * (norms.median() / norms.clamp_min(1e-30)).clamp(max=1.0)


def rep_then_head(cfg) -> list:
    """A local update rule: φ epochs first, then head epochs (BR-MTRL runs the head first). It shares φ
    and keeps the head private, as BR-MTRL does; the epochs come from the same config keys."""
    return [("rep", cfg["train.rep_epochs"]), ("head", cfg["train.head_epochs"])]
