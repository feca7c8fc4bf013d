"""Spacing resampling, pad/crop squaring, anti-aliased resizing and the fused preprocess()."""

from __future__ import annotations

import numpy as np
import pytest

from cxrgen.imaging.decode import DecodedImage
from cxrgen.imaging.geometry import preprocess, resample_to_spacing, resize_square, to_square, to_uint16


def _decoded(pixels: np.ndarray, spacing=None) -> DecodedImage:
    return DecodedImage(pixels=pixels.astype(np.float32), spacing_mm=spacing,
                        spacing_source="hint" if spacing else None, meta={})


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


@pytest.mark.parametrize(("spacing", "target", "shape"), [
    ((0.2, 0.2), 0.4, (60, 50)),  # spacing doubles -> half the pixels
    ((0.1, 0.2), 0.2, (60, 100)),  # anisotropic: only rows shrink
    ((0.2, 0.2), 0.1, (240, 200)),  # upsampling
])
def test_resample_to_spacing_shapes(synthetic_radiograph, spacing, target, shape):
    out = resample_to_spacing(synthetic_radiograph(120, 100).astype(np.float32), spacing, target)
    assert out.shape == shape and out.dtype == np.float32


def test_resample_is_noop_within_tolerance(synthetic_radiograph):
    img = synthetic_radiograph().astype(np.float32)
    assert resample_to_spacing(img, (0.1425, 0.1434), 0.143) is img


def test_downsampling_is_anti_aliased():
    checker = (np.indices((512, 512)).sum(axis=0) % 2).astype(np.float32)  # 1-pixel checkerboard
    small = resample_to_spacing(checker, (0.1, 0.1), 0.3)
    assert abs(small.mean() - 0.5) < 0.02 and small.std() < 0.05  # aliasing would keep full-contrast patterns
    small = resize_square(checker, 100)
    assert abs(small.mean() - 0.5) < 0.02 and small.std() < 0.05


def test_pad_keeps_all_content_and_aspect_ratio():
    img = np.ones((300, 150), dtype=np.float32)
    padded = to_square(img, "pad")
    assert padded.shape == (300, 300) and padded.sum() == img.sum()  # nothing lost
    r0, r1, c0, c1 = _bbox(padded > 0)
    assert (r1 - r0, c1 - c0) == (300, 150) and c0 == 75  # centred
    out = preprocess(_decoded(img), target_spacing_mm=None, policy="pad", resolutions=[256])[256]
    r0, r1, c0, c1 = _bbox(out > 32768)
    assert abs((r1 - r0) / (c1 - c0) - 2.0) < 0.02 and abs((c0 + c1) / 2 - 128) <= 1


def test_crop_keeps_centre():
    img = np.zeros((300, 200), dtype=np.float32)
    img[140:160, 90:110] = 1.0  # a centred mark
    img[:40] = 0.5  # top band, lost by the crop
    cropped = to_square(img, "crop")
    assert cropped.shape == (200, 200)
    np.testing.assert_array_equal(cropped, img[50:250])
    assert cropped.max() == 1.0 and not (cropped == 0.5).any()
    out = preprocess(_decoded(img), target_spacing_mm=None, policy="crop", resolutions=[100])[100]
    r0, r1, c0, c1 = _bbox(out > 32768)
    assert (r0, r1, c0, c1) == (45, 55, 45, 55)


def test_square_policy_names():
    with pytest.raises(ValueError, match="pad.*crop"):
        to_square(np.zeros((4, 5)), "stretch")
    with pytest.raises(ValueError, match="pad.*crop"):
        preprocess(_decoded(np.zeros((40, 50))), target_spacing_mm=None, policy="letterbox", resolutions=[32])


def test_preprocess_outputs_and_ranges(synthetic_radiograph):
    img = synthetic_radiograph(300, 240)
    out = preprocess(_decoded(img, (0.2, 0.2)), target_spacing_mm=0.3, policy="pad", resolutions=[64, 128])
    assert sorted(out) == [64, 128]
    for size, arr in out.items():
        assert arr.dtype == np.uint16 and arr.shape == (size, size)
    assert out[128].max() > 50000 and out[128].min() == 0  # bright mediastinum kept, black padding
    np.testing.assert_array_equal(to_uint16(np.array([-0.2, 0.0, 0.5, 1.0, 1.3])), [0, 0, 32768, 65535, 65535])


def test_preprocess_skips_resampling_without_spacing_or_target(synthetic_radiograph):
    img = synthetic_radiograph(200, 160)
    base = preprocess(_decoded(img), target_spacing_mm=None, policy="crop", resolutions=[64])[64]
    no_spacing = preprocess(_decoded(img), target_spacing_mm=0.2, policy="crop", resolutions=[64])[64]
    no_target = preprocess(_decoded(img, (0.1, 0.3)), target_spacing_mm=None, policy="crop", resolutions=[64])[64]
    np.testing.assert_array_equal(base, no_spacing)
    np.testing.assert_array_equal(base, no_target)


@pytest.mark.parametrize("policy", ["pad", "crop"])
def test_preprocess_matches_the_step_by_step_pipeline(synthetic_radiograph, policy):
    img = synthetic_radiograph(400, 300).astype(np.float32)
    spacing = (0.15, 0.1)  # anisotropic, so resampling changes the geometry
    fused = preprocess(_decoded(img, spacing), target_spacing_mm=0.2, policy=policy, resolutions=[128])[128] / 65535
    stepwise = resize_square(to_square(resample_to_spacing(img, spacing, 0.2), policy), 128)
    # compare away from content edges, where pad placement may differ by one output pixel
    inner = (slice(8, -8), slice(40, -40)) if policy == "pad" else (slice(4, -4), slice(4, -4))
    assert np.abs(fused[inner] - stepwise[inner]).mean() < 0.01


def test_fixed_canvas_gives_the_same_physical_pixel_size():
    from cxrgen.imaging.geometry import fixed_canvas

    # a 100 mm bright disc on two films of different spacing and size must cover the same output pixels
    def film(pixels, spacing):
        yy, xx = (np.mgrid[0:pixels[0], 0:pixels[1]] + 0.5) * spacing
        cy, cx = pixels[0] * spacing / 2, pixels[1] * spacing / 2
        return (((yy - cy) ** 2 + (xx - cx) ** 2) < 50**2).astype(np.float32)

    a = fixed_canvas(film((400, 300), 1.0), (1.0, 1.0), 430.0, 86)  # film smaller than the canvas: padded
    b = fixed_canvas(film((900, 1000), 0.5), (0.5, 0.5), 430.0, 86)  # film larger than the canvas: cropped
    assert a.shape == b.shape == (86, 86)
    disc_px = np.pi * (50 / 5.0) ** 2  # 5 mm output pixels
    assert abs(a.sum() - disc_px) / disc_px < 0.05 and abs(b.sum() - disc_px) / disc_px < 0.05
    assert a[0].max() == 0 and a[:, 0].max() == 0  # padding outside the 400x300 mm film
    np.testing.assert_allclose(a, b, atol=0.35)
    assert np.abs(a - b).mean() < 0.02


# ------------------------------------------------------------------------------------------ chained resampling (issue 16)


def _noisy_film(h, w, seed=0):
    """A smooth film with edges (ribs, body outline) and quantum noise, like the demo phantoms."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    body = ((yy - 0.5) ** 2 / 0.2 + (xx - 0.5) ** 2 / 0.15 < 1).astype(np.float32)
    ribs = 0.15 * (np.sin(yy * 60) > 0.6)
    img = 0.15 + 0.55 * body * (0.6 + 0.4 * np.cos(3 * xx)) + ribs * body
    return np.clip(img + (0.006 + 0.012 * img) * rng.standard_normal((h, w)), 0, 1).astype(np.float32)


@pytest.mark.parametrize(("policy", "spacing", "canvas_mm"), [
    ("pad", (0.15, 0.15), None), ("crop", (0.15, 0.15), None), ("pad", (0.15, 0.1), None), ("pad", (0.2, 0.2), 430.0),
    ("crop", (0.1, 0.1), 100.0)])  # the last canvas is inside the film: an interior box with a margin
def test_chained_resampling_error_is_bounded(policy, spacing, canvas_mm):
    """The small resolution from the large one instead of from the film: the same geometry, a small difference."""
    decoded = _decoded(_noisy_film(1100, 900), spacing)
    kwargs = dict(target_spacing_mm=0.2, policy=policy, resolutions=[64, 256], canvas_mm=canvas_mm)
    chained, reference = preprocess(decoded, **kwargs), preprocess(decoded, chain=False, **kwargs)
    np.testing.assert_array_equal(chained[256], reference[256])  # the largest output is untouched
    diff = np.abs(chained[64].astype(np.int64) - reference[64].astype(np.int64))
    assert diff.max() <= 100 and diff.mean() <= 4  # of 65535 levels (measured: max 21-50, mean 0.8-1.7)
    assert (chained[64] == 0).sum() == (reference[64] == 0).sum()  # black padding in the same place


def test_chaining_only_from_a_reduction_at_least_twice_the_size(synthetic_radiograph):
    small_film = _decoded(_noisy_film(300, 300))
    for resolutions in ([128, 512], [200, 256]):  # upsampled parent; parent less than 2x the child
        kwargs = dict(target_spacing_mm=None, policy="pad", resolutions=resolutions)
        chained, reference = preprocess(small_film, **kwargs), preprocess(small_film, chain=False, **kwargs)
        for size in resolutions:
            np.testing.assert_array_equal(chained[size], reference[size])
    out = preprocess(small_film, target_spacing_mm=None, policy="crop", resolutions=[32, 128, 64, 128])
    assert list(out) == [32, 128, 64] and all(out[s].shape == (s, s) for s in out)
