"""SGD on linear heads over fixed features, for many clients at once.

While φ is frozen, a client's head epochs see only φ's features, so BR-MTRL's head phase is plain
mini-batch SGD of a linear model (cross-entropy or squared error) on those features. Two paths with
one signature, tested equal (as ``torch.optim``'s single- and multi-tensor SGD):

* :func:`head_sgd_reference`: per client, per mini-batch, ``torch.optim.SGD`` with autograd.
* :func:`head_sgd_batched`: all clients together; one step updates every client's head with
  batched matrix products and closed-form gradients, so the Python overhead is paid once per step
  for the whole round instead of once per client-step.

``epochs`` yields, for each epoch, the features and targets of every client in the order they are
visited (clients may hold different numbers of samples; shorter clients simply stop stepping).
``weight`` is (m, C, k) and ``bias`` (m, C) or None; both are updated in place and returned.
SGD follows ``torch.optim.SGD``: d = g + λw; b = μb + d (b = d at the first step); w ← w − ηb.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .losses import loss_fn

__all__ = ["EpochData", "head_sgd_batched", "head_sgd_reference"]

EpochData = tuple[list[torch.Tensor], list[torch.Tensor]]


def head_sgd_reference(epochs: Iterable[EpochData], weight: torch.Tensor, bias: torch.Tensor | None, *,
                       lr: float, momentum: float, weight_decay: float, batch_size: int):
    """The simple path: one ``nn.Linear`` and one ``torch.optim.SGD`` per client."""
    m = weight.shape[0]
    heads = []
    for i in range(m):
        lin = nn.Linear(weight.shape[2], weight.shape[1], bias=bias is not None,
                        dtype=weight.dtype, device=weight.device)
        with torch.no_grad():
            lin.weight.copy_(weight[i])
            if bias is not None:
                lin.bias.copy_(bias[i])
        heads.append((lin, torch.optim.SGD(lin.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)))
    for feats, targets in epochs:
        for (lin, opt), f, y in zip(heads, feats, targets):
            for s in range(0, len(y), batch_size):
                opt.zero_grad(set_to_none=True)
                loss_fn(lin(f[s:s + batch_size]), y[s:s + batch_size]).backward()
                opt.step()
    with torch.no_grad():
        for i, (lin, _) in enumerate(heads):
            weight[i].copy_(lin.weight)
            if bias is not None:
                bias[i].copy_(lin.bias)
    return weight, bias


def _pad(feats: list[torch.Tensor], targets: list[torch.Tensor]):
    """Stack ragged clients into (m, length, k) / (m, length) with zeros after each client's samples. The
    lengths are known on the host: nothing is read back from the device."""
    m, k = len(feats), feats[0].shape[-1]
    sizes = [len(y) for y in targets]
    counts = torch.tensor(sizes).to(feats[0].device)
    length = max(sizes) if m else 0
    fp = feats[0].new_zeros(m, length, k)
    yp = targets[0].new_zeros(m, length)
    for i, (f, y) in enumerate(zip(feats, targets)):
        fp[i, :len(y)] = f
        yp[i, :len(y)] = y
    return fp, yp, counts, length


@torch.no_grad()
def head_sgd_batched(epochs: Iterable[EpochData], weight: torch.Tensor, bias: torch.Tensor | None, *,
                     lr: float, momentum: float, weight_decay: float, batch_size: int):
    """The batched path: every client's step at once, closed-form gradients, masked ragged batches."""
    m, c, _ = weight.shape
    buf_w = torch.zeros_like(weight)
    buf_b = torch.zeros_like(bias) if bias is not None else None
    first = True
    arange_bs = torch.arange(batch_size, device=weight.device)
    for feats, targets in epochs:
        fp, yp, counts, length = _pad(feats, targets)
        regression = yp.is_floating_point()
        for s in range(0, length, batch_size):
            fb = fp[:, s:s + batch_size]                                   # (m, b, k)
            yb = yp[:, s:s + batch_size]
            b = fb.shape[1]
            valid = (s + arange_bs[:b])[None, :] < counts[:, None]          # (m, b)
            n_valid = valid.sum(1)
            active = n_valid > 0      # some client is always active: s < length, the longest client's size
            out = torch.baddbmm(bias[:, None, :], fb, weight.transpose(1, 2)) if bias is not None \
                else torch.bmm(fb, weight.transpose(1, 2))                  # (m, b, C)
            if regression:
                g = 2.0 * (out.squeeze(-1) - yb)[..., None]
            else:
                g = torch.softmax(out, dim=-1)
                g.scatter_add_(2, yb[..., None], torch.full_like(g[..., :1], -1.0))
            g = g * (valid.to(g.dtype) / n_valid.clamp_min(1).to(g.dtype)[:, None])[..., None]
            grad_w = torch.bmm(g.transpose(1, 2), fb)                       # (m, C, k)
            step_mask = active.to(weight.dtype)
            _sgd_step(weight, grad_w, buf_w, step_mask[:, None, None], first, lr, momentum, weight_decay)
            if bias is not None and buf_b is not None:
                _sgd_step(bias, g.sum(1), buf_b, step_mask[:, None], first, lr, momentum, weight_decay)
            first = False
    return weight, bias


def _sgd_step(p: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor, mask: torch.Tensor, first: bool,
              lr: float, momentum: float, weight_decay: float) -> None:
    """In-place SGD with momentum and weight decay on the rows where ``mask`` is 1."""
    d = grad + weight_decay * p if weight_decay else grad
    if momentum:
        new_buf = d if first else momentum * buf + d
        buf.copy_(torch.where(mask.bool(), new_buf, buf))
        d = buf
    p.sub_(lr * d * mask)
