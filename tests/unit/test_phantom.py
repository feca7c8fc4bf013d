"""Chest phantom renderer: determinism, physical scale, anatomy and measurable findings."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cxrgen.demo.lung_atlas import ATLAS_PX, load_lung_atlas
from cxrgen.demo.phantom import PhantomSpec, render_phantom, render_phantom_with_masks
from cxrgen.labels import CHEXPERT_LABELS

SIZE, SPACING = 256, 1.5  # a 384 mm film


def spec(view: str = "PA", findings: dict[str, str] | None = None, seed: int = 3, **kw) -> PhantomSpec:
    base = dict(view=view, height_px=SIZE, width_px=SIZE, spacing_mm=SPACING, sex="M", age=55.0,
                findings=findings or {}, seed=seed)
    base.update(kw)
    return PhantomSpec(**base)


def width_px(mask: np.ndarray) -> int:
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[-1] - cols[0] + 1) if cols.size else 0


def test_atlas_has_real_two_lung_shapes():
    atlas = load_lung_atlas()
    assert 400 <= len(atlas) <= 435  # 435 non-empty masks in the zip, a few rejected as implausible
    inner, outer = atlas.distances(0)
    assert inner.shape == outer.shape == (2, ATLAS_PX, ATLAS_PX)
    lungs = inner > 0
    # image-left lung on the left half, image-right lung on the right half
    cols = np.arange(ATLAS_PX)
    assert (lungs[0].sum(axis=0) * cols).sum() / lungs[0].sum() < ATLAS_PX / 2
    assert (lungs[1].sum(axis=0) * cols).sum() / lungs[1].sum() > ATLAS_PX / 2
    # the outer distance ignores the medial border, so it is never smaller than the plain distance
    assert np.all(outer[lungs] >= inner[lungs] - 0.5)


@pytest.mark.parametrize("view", ["PA", "AP", "LATERAL"])
def test_dtype_range_and_determinism(view):
    findings = {"Pleural Effusion": "left", "Support Devices": "", "Lung Lesion": ""}
    a = render_phantom(spec(view, findings, height_px=200, width_px=170, spacing_mm=2.2))
    b = render_phantom(spec(view, findings, height_px=200, width_px=170, spacing_mm=2.2))
    assert a.dtype == np.float32 and a.shape == (200, 170)
    assert np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0
    assert np.array_equal(a, b)
    # MONOCHROME2 sense: air outside the body is dark, the film is not flat
    assert a[:, :3].mean() < a.mean() and a.std() > 0.1


def test_seeds_make_different_patients_and_no_finding_is_normal():
    a, ma = render_phantom_with_masks(spec(seed=1))
    b, mb = render_phantom_with_masks(spec(seed=2))
    assert np.abs(a - b).mean() > 0.01
    assert (ma["lungs"] != mb["lungs"]).mean() > 0.01  # different real lung shapes
    assert np.array_equal(render_phantom(spec(seed=1, findings={"No Finding": ""})), a)


def test_invalid_specs_are_rejected():
    with pytest.raises(ValueError, match="view"):
        render_phantom(spec("OBLIQUE"))
    with pytest.raises(ValueError, match="unknown findings"):
        render_phantom(spec(findings={"Nodule": "left"}))


def test_physical_scale_not_stretched():
    _, fine = render_phantom_with_masks(spec(spacing_mm=1.5))
    _, coarse = render_phantom_with_masks(spec(spacing_mm=3.0))
    ratio = width_px(fine["lungs"]) / width_px(coarse["lungs"])
    assert 1.85 < ratio < 2.15
    # a narrower film crops, it does not squeeze the patient
    _, narrow = render_phantom_with_masks(spec(width_px=200))
    assert abs(width_px(narrow["lungs"]) - width_px(fine["lungs"])) <= 2
    rows = np.flatnonzero(fine["lungs"].any(axis=1))
    rows_narrow = np.flatnonzero(narrow["lungs"].any(axis=1))
    assert abs(len(rows) - len(rows_narrow)) <= 2
    # adult lung fields about 230-330 mm wide, inside a 384 mm film
    assert 230 < width_px(fine["lungs"]) * SPACING < 330


def test_child_is_smaller_than_adult():
    _, adult = render_phantom_with_masks(spec(age=40))
    _, child = render_phantom_with_masks(spec(age=4))
    assert width_px(child["lungs"]) < 0.8 * width_px(adult["lungs"])


def ctr_from_masks(masks: dict[str, np.ndarray]) -> float:
    return width_px(masks["heart"]) / width_px(masks["lungs"])


def ctr_from_image(image: np.ndarray, masks: dict[str, np.ndarray]) -> float:
    """Heart borders found on the image as the steepest lung-to-heart edges on each side of the midline, in the
    rows where lung lies on both sides of the heart; widest span / lung-field width, as a reader measures it."""
    lungs = masks["lungs"]
    cols = np.flatnonzero(lungs.any(axis=0))
    centre, half = (cols[0] + cols[-1]) // 2, (cols[-1] - cols[0]) // 2
    rows = np.flatnonzero(masks["lung_right"].any(axis=1) & masks["lung_left"].any(axis=1))
    lower = rows[len(rows) // 2: len(rows) * 7 // 8]  # the lower lung zones, where the heart borders are
    profile = ndimage.uniform_filter(image, 5)
    gradient = np.gradient(profile, axis=1)
    reach = int(half)
    spans = []
    for row in lower:
        left = centre - reach + int(np.argmax(gradient[row, centre - reach: centre]))  # lung -> heart: rising
        right = centre + int(np.argmin(gradient[row, centre: centre + reach]))  # heart -> lung: falling
        spans.append(right - left)
    return float(np.median(spans)) / (cols[-1] - cols[0] + 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cardiomegaly_raises_cardiothoracic_ratio(seed):
    normal_img, normal = render_phantom_with_masks(spec(seed=seed))
    big_img, big = render_phantom_with_masks(spec(findings={"Cardiomegaly": ""}, seed=seed))
    assert 0.38 < ctr_from_masks(normal) < 0.52
    assert ctr_from_masks(big) > 0.55
    normal_ctr, big_ctr = ctr_from_image(normal_img, normal), ctr_from_image(big_img, big)
    assert normal_ctr < 0.5
    assert big_ctr > normal_ctr + 0.08


def test_ap_magnifies_the_heart():
    _, pa = render_phantom_with_masks(spec("PA"))
    _, ap = render_phantom_with_masks(spec("AP"))
    assert width_px(ap["heart"]) > 1.07 * width_px(pa["heart"])


def basal_region(masks: dict[str, np.ndarray], side: str) -> np.ndarray:
    lung = masks[f"lung_{side}"]
    rows = np.flatnonzero(lung.any(axis=1))
    cut = rows[0] + int(0.75 * (rows[-1] - rows[0]))
    region = lung.copy()
    region[:cut] = False
    return region


@pytest.mark.parametrize("side", ["left", "right"])
def test_effusion_whitens_the_stated_base_only(side):
    other = "right" if side == "left" else "left"
    normal, masks = render_phantom_with_masks(spec())
    fluid, fluid_masks = render_phantom_with_masks(spec(findings={"Pleural Effusion": side}))
    here, there = basal_region(masks, side), basal_region(masks, other)
    assert fluid[here].mean() - normal[here].mean() > 0.1
    assert abs(fluid[there].mean() - normal[there].mean()) < 0.01
    # the patient's left lung is on the image right for frontal films
    cols = np.flatnonzero(fluid_masks["effusion"].any(axis=0))
    assert (cols.mean() > SIZE / 2) == (side == "left")


def marking_texture(image: np.ndarray, region: np.ndarray) -> float:
    """Standard deviation of fine detail (vessel-sized band-pass) inside a region."""
    detail = ndimage.gaussian_filter(image, 0.7) - ndimage.gaussian_filter(image, 1.5)
    return float(detail[region].std())


@pytest.mark.parametrize("side", ["left", "right"])
def test_pneumothorax_rim_is_darker_and_featureless(side):
    normal, _ = render_phantom_with_masks(spec(seed=5))
    ptx, masks = render_phantom_with_masks(spec(findings={"Pneumothorax": side}, seed=5))
    # the rim away from its own edges (pleural line, chest wall, mediastinum), where only texture differs
    rim = ndimage.binary_erosion(masks["pneumothorax"], iterations=5) & ndimage.binary_erosion(
        masks[f"lung_{side}"], iterations=4)
    assert rim.sum() > 100
    assert ptx[rim].mean() < normal[rim].mean() - 0.02
    assert marking_texture(ptx, rim) < 0.85 * marking_texture(normal, rim)
    ptx_cols = np.nonzero(masks["pneumothorax"])[1]
    on_stated_half = (ptx_cols > SIZE / 2) if side == "left" else (ptx_cols < SIZE / 2)
    assert on_stated_half.mean() > 0.95
    other = masks["lung_right" if side == "left" else "lung_left"]
    assert abs(ptx[other].mean() - normal[other].mean()) < 0.01


def test_support_devices_add_very_bright_pixels():
    normal = render_phantom(spec())
    for seed in range(3):
        devices, masks = render_phantom_with_masks(spec(findings={"Support Devices": ""}, seed=seed))
        assert masks["devices"].sum() > 50
        assert (devices > 0.95).sum() > (normal > 0.95).sum() + 30
        assert np.median(devices[masks["devices"]]) > 0.9


def test_lateral_differs_structurally_from_frontal():
    frontal, fm = render_phantom_with_masks(spec("PA"))
    lateral, lm = render_phantom_with_masks(spec("LATERAL"))
    spine_x = [np.flatnonzero(m["spine"].any(axis=0)).mean() / SIZE for m in (fm, lm)]
    assert abs(spine_x[0] - 0.5) < 0.05  # midline on frontal films
    assert spine_x[1] > 0.6  # posterior (image right) on the lateral
    heart_x = np.flatnonzero(lm["heart"].any(axis=0)).mean() / SIZE
    assert heart_x < spine_x[1] - 0.2  # heart anterior
    # on the image: PA and AP of one patient look alike, the lateral of the same patient does not
    ap = render_phantom(spec("AP"))
    assert np.corrcoef(frontal.ravel(), ap.ravel())[0, 1] > np.corrcoef(frontal.ravel(), lateral.ravel())[0, 1] + 0.2
    # the brightest thoracic column band (spine) sits right of the lung field on the lateral
    lung_rows = np.flatnonzero(lm["lungs"].any(axis=1))
    band = lateral[lung_rows[len(lung_rows) // 3]: lung_rows[-1]].mean(axis=0)
    lung_cols = np.flatnonzero(lm["lungs"].any(axis=0))
    assert band[int(spine_x[1] * SIZE)] > band[lung_cols[0]: lung_cols[-1]].mean() + 0.1


LOCAL_FINDINGS = ["Pleural Effusion", "Pneumothorax", "Consolidation", "Pneumonia", "Lung Opacity", "Lung Lesion",
                  "Atelectasis", "Pleural Other", "Fracture"]


@pytest.mark.parametrize("finding", LOCAL_FINDINGS)
def test_lateralised_findings_change_the_stated_side(finding):
    normal = render_phantom(spec(seed=8))
    changed = np.abs(render_phantom(spec(findings={finding: "left"}, seed=8)) - normal)
    image_left, image_right = changed[:, : SIZE // 2].sum(), changed[:, SIZE // 2:].sum()
    assert image_right > 3 * image_left, finding  # patient left = image right


@pytest.mark.parametrize("finding", [name for name in CHEXPERT_LABELS if name != "No Finding"])
@pytest.mark.parametrize("view", ["PA", "LATERAL"])
def test_every_finding_is_visible(finding, view):
    if view == "LATERAL" and finding == "Fracture":
        pytest.skip("rib fractures are drawn on frontal films; a lateral shows only a small pleural haematoma")
    normal = render_phantom(spec(view, seed=11))
    image = render_phantom(spec(view, findings={finding: ""}, seed=11))
    # at least a few hundred mm^2 change clearly (> 0.05 display units)
    assert (np.abs(image - normal) > 0.05).sum() * SPACING**2 > 300, finding


def test_findings_combine():
    _, masks = render_phantom_with_masks(spec(findings={"Cardiomegaly": "", "Pleural Effusion": "bilateral",
                                                        "Support Devices": "", "Edema": ""}))
    assert ctr_from_masks(masks) > 0.55
    for name in ("effusion", "devices", "opacity"):
        assert masks[name].any(), name
    effusion_cols = np.flatnonzero(masks["effusion"].any(axis=0))
    assert effusion_cols.min() < SIZE / 3 and effusion_cols.max() > 2 * SIZE / 3
