"""Batch norm and sums over data-parallel ranks (cxrgen.train.collectives): 2 gloo ranks, each holding half of a
batch, get the outputs, gradients and running statistics of one BatchNorm2d seeing the whole batch."""

import torch
import torch.distributed as dist
from torch import nn

from cxrgen.train.collectives import GlobalBatchNorm2d, global_batch_norm, sum_over_ranks
from cxrgen.train.distributed import launch

BATCH, CHANNELS = 6, 3


def _batch():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, CHANNELS, 5, 4, generator=generator) * 3 + 1
    weights = torch.randn(BATCH, CHANNELS, 5, 4, generator=generator)  # a loss that is not symmetric in the rows
    return x, weights


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(CHANNELS, CHANNELS, 1), nn.BatchNorm2d(CHANNELS, momentum=0.3))
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-1, 1)
    return net


def _train_steps(net, x, weights, rows):
    """Two forward/backward passes on ``rows``; returns outputs, the input's gradient and the parameters' gradients
    (the loss is this rank's share of the global batch's mean, as the training loop's backward step divides it)."""
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    x = x[rows].clone().requires_grad_(True)
    for _ in range(2):
        net.zero_grad()
        out = net(x)
        loss = (out * weights[rows]).sum() / BATCH
        loss.backward()
    grads = [p.grad for p in net.parameters()]
    if world_size > 1:
        for g in grads:
            dist.all_reduce(g)
    return out.detach(), x.grad, grads


def _on_rank():
    """Rank r of 2: half the batch through a synced copy of the net; rank 0 returns everything gathered."""
    rank = dist.get_rank()
    x, weights = _batch()
    net = global_batch_norm(_net())
    assert isinstance(net[1], GlobalBatchNorm2d)
    half = BATCH // 2
    out, x_grad, grads = _train_steps(net, x, weights, slice(rank * half, (rank + 1) * half))
    outs, x_grads = [torch.empty_like(out) for _ in range(2)], [torch.empty_like(x_grad) for _ in range(2)]
    dist.all_gather(outs, out)
    dist.all_gather(x_grads, x_grad)
    total = sum_over_ranks(torch.tensor([float(rank + 1)]))
    return {"out": torch.cat(outs), "x_grad": torch.cat(x_grads), "grads": grads, "state": net.state_dict(),
            "sum": float(total)}


def test_two_ranks_normalise_by_the_global_batch():
    parallel = launch(_on_rank, 2)
    x, weights = _batch()
    net = _net()
    out, x_grad, grads = _train_steps(net, x, weights, slice(None))
    assert parallel["sum"] == 3.0
    torch.testing.assert_close(parallel["out"], out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parallel["x_grad"], x_grad, rtol=1e-5, atol=1e-7)
    for p, q in zip(parallel["grads"], grads, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    state = net.state_dict()
    assert parallel["state"].keys() == state.keys()  # checkpoints are interchangeable
    for key, value in state.items():
        torch.testing.assert_close(parallel["state"][key], value, rtol=1e-5, atol=1e-6)
    # the per-half statistics would be far off: the halves' means differ by ~0.3 standard deviations
    halves = [x[:3].mean((0, 2, 3)), x[3:].mean((0, 2, 3))]
    assert (halves[0] - halves[1]).abs().max() > 0.1


def test_one_process_is_plain_batch_norm():
    x, weights = _batch()
    synced = global_batch_norm(_net())
    plain = _net()
    for a, b in zip(_train_steps(synced, x, weights, slice(None)), _train_steps(plain, x, weights, slice(None)),
                    strict=True):
        for p, q in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b], strict=True):
            assert torch.equal(p, q)
    synced.eval()
    plain.eval()
    assert torch.equal(synced(x), plain(x))
