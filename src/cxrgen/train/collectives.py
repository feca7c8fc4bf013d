"""Collectives with gradients for data-parallel trainers whose loss couples the rows of the global batch.

The shared loop (:mod:`cxrgen.train.loop`) makes every rank apply the gradient of the global batch's mean loss when
each rank's loss depends on its own rows only. Two kinds of model break that and need the other ranks' rows inside the
forward pass:

- a contrastive loss, whose negatives are the whole batch: :func:`gather_rows`;
- batch normalisation, whose training-mode statistics are the whole batch's: :func:`global_batch_norm`.

Both are no-ops without a process group (a single process computes exactly what it computed before). Their
backward passes are collectives too, so every rank must run the same forward and backward (the loop's ranks do).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rows, ctx.rank = tensor.shape[0], dist.get_rank()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's loss may depend on this rank's rows
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


class _SumOverRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.contiguous().clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total)  # the sum is an input of every rank's loss
        return total


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` (the same number of rows on each) concatenated in rank order, with gradient: backward
    sums the gradients of all ranks' losses with respect to this rank's rows. Without a process group: ``tensor``."""
    return tensor if _world_size() == 1 else _GatherRows.apply(tensor)


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over the ranks, with gradient (every rank's loss depends on every rank's summand).
    Without a process group: ``tensor``."""
    return tensor if _world_size() == 1 else _SumOverRanks.apply(tensor)


def mean_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over the ranks, with gradient (see :func:`sum_over_ranks`)."""
    world_size = _world_size()
    return tensor if world_size == 1 else _SumOverRanks.apply(tensor) / world_size


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training-mode statistics (and running-statistics updates) are those of the global batch
    over every data-parallel rank, with their gradients: the ranks normalise as one process with the whole batch
    would. torch's ``SyncBatchNorm`` does the same on GPUs only; this one also runs on CPU (gloo), so the tests
    that compare ranks with one process cover it. Same parameters, buffers and state dict as ``BatchNorm2d``; eval
    mode and a single process are plain ``BatchNorm2d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        world_size = _world_size()
        if not self.training or world_size == 1:
            return super().forward(x)
        self._check_input_dim(x)
        dims = (0, 2, 3)
        count = x.shape[0] * x.shape[2] * x.shape[3] * world_size  # every rank holds as many rows
        # statistics in float32 whatever autocast made the input (as torch's batch-norm kernels accumulate)
        mean = sum_over_ranks(x.float().sum(dims)) / count
        centred = x.float() - mean[None, :, None, None]
        var = sum_over_ranks(centred.pow(2).sum(dims)) / count  # biased, as batch norm normalises
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                unbiased = var.detach() * (count / max(1, count - 1))
                self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
        return y.to(x.dtype)


def global_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` inside ``module`` (in place) by a :class:`GlobalBatchNorm2d` holding the same
    parameter and buffer objects (an optimizer built before still updates them); returns ``module``."""
    for name, child in list(module.named_children()):
        if type(child) is nn.BatchNorm2d:
            replacement = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                            child.track_running_stats)
            replacement.weight, replacement.bias = child.weight, child.bias
            for buffer in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(replacement, buffer, getattr(child, buffer))
            replacement.train(child.training)
            setattr(module, name, replacement)
        else:
            global_batch_norm(child)
    return module
