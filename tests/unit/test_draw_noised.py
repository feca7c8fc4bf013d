"""``draw_noised``, the posterior sample / timestep / noise draw of the LDM and DKIM trainers: 2 ranks, each drawing
for the global batch and keeping its rows, together use the single process's random numbers."""

import pytest
import torch
from diffusers import DDPMScheduler

from cxrgen.train.latent_diffusion import draw_noised
from cxrgen.train.loop import TrainContext


def _context(rank: int, world_size: int, seed: int) -> TrainContext:
    return TrainContext(step=1, generator=torch.Generator().manual_seed(seed), device=torch.device("cpu"),
                        autocast=lambda: torch.autocast("cpu", enabled=False), rank=rank, world_size=world_size)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("posterior", [True, False])
def test_two_ranks_draw_the_single_process_batch(prediction_type, posterior):
    scheduler = DDPMScheduler(num_train_timesteps=50, prediction_type=prediction_type)
    source = torch.Generator().manual_seed(0)
    mean = torch.randn((6, 2, 4, 4), generator=source)
    std = torch.rand((6, 2, 4, 4), generator=source) + 0.1 if posterior else None
    batch = [5, 0, 3, 1]  # one global batch; rank 0 gets [5, 0], rank 1 [3, 1]
    alone = _context(0, 1, seed=7)
    single = draw_noised(scheduler, mean, std, batch, alone.generator, alone)
    ranks = [_context(rank, 2, seed=7) for rank in (0, 1)]
    shares = [draw_noised(scheduler, mean, std, ctx.local(batch), ctx.generator, ctx) for ctx in ranks]
    for part, whole in zip(zip(*shares, strict=True), single, strict=True):  # noisy, t, target
        assert torch.equal(torch.cat(part), whole)
    # without a context: one process, the same stream
    assert all(torch.equal(a, b) for a, b in zip(
        draw_noised(scheduler, mean, std, batch, torch.Generator().manual_seed(7)), single, strict=True))
    # every rank consumed the whole global batch's numbers: their streams stay in step with the single process
    assert all(torch.equal(ctx.generator.get_state(), alone.generator.get_state()) for ctx in ranks)
