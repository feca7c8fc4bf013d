"""The EHR encoder's window masking: nothing outside [start, end) reaches any output; what is inside does."""

import torch

from cxrgen.icu.ehr_encoder import EhrEncoder, window_mask


def _encoder():
    torch.manual_seed(0)
    return EhrEncoder(n_features=76, n_static=2, max_hours=24, d_model=16, n_heads=2, n_layers=2, ff_dim=32,
                      dropout=0.1).eval()


def _inputs(batch=3, hours=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(batch, hours, 76, generator=g)
    static = torch.rand(batch, 2, generator=g)
    start, end = torch.tensor([0, 5, 10]), torch.tensor([24, 12, 11])
    return values, static, start, end


def test_window_mask():
    mask = window_mask(6, torch.tensor([0, 2, 3]), torch.tensor([6, 4, 3]))
    assert mask.tolist() == [[True] * 6, [False, False, True, True, False, False], [False] * 6]


def test_values_outside_the_window_change_nothing():
    encoder = _encoder()
    values, static, start, end = _inputs()
    out = encoder(values, static, start, end)
    changed = values.clone()
    outside = ~window_mask(24, start, end)
    changed[outside] = 1000.0 * torch.randn(int(outside.sum()), 76)
    again = encoder(changed, static, start, end)
    assert torch.equal(out.tokens, again.tokens) and torch.equal(out.cls, again.cls)
    assert torch.equal(out.mask, again.mask)
    assert out.tokens.shape == (3, 26, 16) and out.cls.shape == (3, 16)
    assert out.mask[:, :2].all() and torch.equal(out.mask[:, 2:], ~outside)
    assert (out.tokens[:, 2:][outside] == 0).all()  # masked bins give zero tokens (no stale values downstream)


def test_a_value_inside_the_window_changes_the_pooled_output():
    encoder = _encoder()
    values, static, start, end = _inputs()
    out = encoder(values, static, start, end)
    changed = values.clone()
    changed[1, 7, 0] += 3.0  # bin 7 is inside sample 1's window [5, 12)
    again = encoder(changed, static, start, end)
    assert (again.cls[1] - out.cls[1]).abs().max() > 1e-4
    assert torch.equal(again.cls[0], out.cls[0]) and torch.equal(again.cls[2], out.cls[2])  # no mixing of samples
    changed_static = static.clone()
    changed_static[2, 0] += 0.5  # the static token counts even with a one-bin window
    assert (encoder(values, changed_static, start, end).cls[2] - out.cls[2]).abs().max() > 1e-4


def test_save_and_load_with_config(tmp_path):
    encoder = _encoder()
    encoder.save_pretrained(tmp_path / "enc")
    loaded = EhrEncoder.from_pretrained(tmp_path / "enc").eval()
    values, static, start, end = _inputs()
    assert loaded.config.d_model == 16 and loaded.config.n_layers == 2
    assert torch.equal(loaded(values, static, start, end).cls, encoder(values, static, start, end).cls)
