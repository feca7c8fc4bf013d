"""Chest radiograph phantoms for the demo corpus: a physical-scale projection model with real lung shapes.

Every structure is placed in millimetres (patient frame: x to the image right, y down from the lung apex), turned into
a path length of soft tissue, air, bone or metal along the ray, and mapped to MONOCHROME2 display values with
``1 - exp(-attenuation)``. Lung fields are sampled from the v7labs lung-mask atlas (:mod:`cxrgen.demo.lung_atlas`).
Findings (CheXpert names) change the anatomy in ways a classifier can see at 64-128 px and a test can measure.

Frontal films follow the display convention: the patient's right is on the image left (PA and AP alike).
Lateral films show the patient facing the image left (sternum left, spine right).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from cxrgen.demo.lung_atlas import DIST_OFFSET, load_lung_atlas
from cxrgen.labels import CHEXPERT_LABELS

RIGHT, LEFT = 0, 1  # patient sides; on frontal films RIGHT is the image-left lung (atlas side 0)
_SIDE_NAMES = {"right": (RIGHT,), "left": (LEFT,), "bilateral": (RIGHT, LEFT)}
_LATERAL_VIEWS = {"LATERAL", "LAT", "LL", "RL", "L"}


@dataclass(frozen=True)
class PhantomSpec:
    view: str  # "PA", "AP" or "LATERAL"
    height_px: int
    width_px: int
    spacing_mm: float  # physical pixel size: the film covers height_px*spacing_mm mm; anatomy keeps its physical size
    sex: str = "U"  # "M", "F", "U"
    age: float = 50.0
    # positive findings: CheXpert label name -> laterality "left" | "right" | "bilateral" | "" (unspecified)
    findings: dict[str, str] = field(default_factory=dict)
    seed: int = 0


def render_phantom(spec: PhantomSpec) -> np.ndarray:
    """Float32 (height_px, width_px) image in [0, 1], display sense of MONOCHROME2 (bone/devices bright, air dark)."""
    return _render(spec, with_masks=False)[0]


def render_phantom_with_masks(spec: PhantomSpec) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The image of :func:`render_phantom` plus boolean masks of what was drawn: ``body``, ``lungs``, ``lung_right``,
    ``lung_left``, ``heart``, ``mediastinum``, ``spine`` and, when present, ``effusion``, ``pneumothorax``,
    ``opacity`` (airspace findings and edema), ``lesion``, ``atelectasis``, ``pleural_other``, ``fracture``, ``devices``."""
    image, masks = _render(spec, with_masks=True)
    return image, masks


# --------------------------------------------------------------------------------------------------------------------
# patient


@dataclass
class _Patient:
    sex: str
    age: float
    growth: float  # 1 for adults, down to about 0.42 for a newborn
    lung_w: float  # mm, width of the lung-field bounding box (the thoracic width used for the CTR)
    lung_h: float  # mm, apex to the lowest costophrenic angle
    wall: float  # mm of ribs + muscle lateral to the lungs
    fat: float  # mm of subcutaneous soft tissue
    depth: float  # mm, antero-posterior chest diameter
    ctr: float  # cardiothoracic ratio
    mediastinum_ratio: float  # upper mediastinal width / lung_w
    heart_tilt: float  # radians
    bone: float  # bone density factor
    kyphosis: float  # mm of thoracic kyphosis bulge (lateral) / apical lordosis (frontal)
    atlas_index: int
    shift_x: float  # mm, patient off the film centre
    shift_y: float
    breast_r: float  # mm, 0 for none
    hilum_y: float  # fraction of lung height
    arm_gap: float  # mm between chest wall and arm
    knob: float  # mm, aortic knob radius
    side_raise: list[float] = field(default_factory=lambda: [0.0, 0.0])  # mm, hemidiaphragm raised by volume loss


def _growth(age: float) -> float:
    # chest width grows from about 0.42 of adult at birth to adult size at 16 (pediatric thoracic growth charts)
    if age >= 16:
        return 1.0
    return 0.42 + 0.58 * (max(age, 0.0) / 16.0) ** 0.75


def _make_patient(spec: PhantomSpec, rng: np.random.Generator, atlas_aspect: np.ndarray) -> _Patient:
    sex = spec.sex.upper()[:1] if spec.sex else "U"
    if sex not in ("M", "F"):
        sex = "M" if rng.random() < 0.5 else "F"
    age = float(spec.age) if spec.age is not None and np.isfinite(spec.age) else 50.0
    growth = _growth(age)
    atlas_index = int(rng.integers(len(atlas_aspect)))
    # adult lung-field widths of about 260-300 mm give the 300-380 mm body widths of the brief
    lung_w = float(rng.normal(290.0 if sex == "M" else 264.0, 13.0)) * growth
    aspect = 0.5 * float(atlas_aspect[atlas_index]) + 0.45 + float(rng.normal(0, 0.03))
    aspect = float(np.clip(aspect, 0.72, 1.05)) * (0.9 if age < 8 else 1.0)
    lung_h = lung_w * aspect
    habitus = float(rng.beta(2.0, 3.0))
    # normal PA cardiothoracic ratio 0.42-0.48 (brief); infants run higher (up to ~0.55)
    ctr = float(rng.uniform(0.42, 0.48)) + 0.07 * max(0.0, 1.0 - age / 8.0)
    old = float(np.clip((age - 50.0) / 40.0, 0.0, 1.0))
    return _Patient(
        sex=sex, age=age, growth=growth, lung_w=lung_w, lung_h=lung_h,
        wall=14.0 * growth, fat=(6.0 + 38.0 * habitus) * (0.6 + 0.4 * growth),
        depth=lung_w * float(rng.uniform(0.66, 0.76)) + 20.0 * habitus * growth,
        ctr=ctr, mediastinum_ratio=float(rng.uniform(0.19, 0.24)) + 0.06 * max(0.0, 1.0 - age / 3.0),
        heart_tilt=float(rng.uniform(0.35, 0.6)), bone=1.0 - 0.3 * old - 0.15 * (age < 12),
        kyphosis=(25.0 * old + float(rng.uniform(0, 6))) * growth, atlas_index=atlas_index,
        shift_x=float(rng.normal(0, 7)) * growth, shift_y=float(rng.normal(8, 8)) * growth,
        breast_r=float(rng.uniform(45, 80)) * (0.7 + 0.5 * habitus) if sex == "F" and age >= 14 else 0.0,
        hilum_y=float(rng.uniform(0.38, 0.46)), arm_gap=float(rng.uniform(4, 25)) * growth,
        knob=(14.0 + 8.0 * old + float(rng.uniform(-2, 3))) * growth,
    )


# --------------------------------------------------------------------------------------------------------------------
# helpers


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _finding_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFFFFFF, 1000 + zlib.crc32(name.encode())])


class _Scene:
    """Render state: film geometry, per-side lung maps and the path-length accumulators."""

    def __init__(self, spec: PhantomSpec, patient: _Patient, lateral: bool):
        self.spec, self.p, self.lateral = spec, patient, lateral
        self.ap = spec.view.upper() == "AP"
        h, w, sp = spec.height_px, spec.width_px, float(spec.spacing_mm)
        self.h, self.w, self.sp = h, w, sp
        # film: the lung box is centred horizontally and sits slightly below the film centre
        self.apex_film = h * sp / 2.0 - patient.lung_h / 2.0 + patient.shift_y
        self.xs = ((np.arange(w, dtype=np.float32) + 0.5) * sp - w * sp / 2.0 - patient.shift_x).astype(np.float32)
        self.ys = ((np.arange(h, dtype=np.float32) + 0.5) * sp - self.apex_film).astype(np.float32)
        self.X, self.Y = self.xs[None, :], self.ys[:, None]
        self.tissue = np.zeros((h, w), np.float32)
        self.bone = np.zeros((h, w), np.float32)
        self.metal = np.zeros((h, w), np.float32)
        self.occ: list[np.ndarray | None] = [None, None]  # fraction of lung air replaced, per side
        self.boost: list[np.ndarray | None] = [None, None]  # extra lucency (pneumothorax), per side
        self.no_vessels = np.zeros((h, w), np.float32)  # 1 where lung markings must vanish
        self.masks: dict[str, np.ndarray] = {}
        g = patient.growth
        if lateral:
            self.box_w = patient.depth * 0.86  # antero-posterior lung extent
            self.box_x0 = -self.box_w / 2.0  # anterior edge of the lung field
        else:
            self.box_w = patient.lung_w
            self.box_x0 = -patient.lung_w / 2.0
        self.g = g

    # ---- windows: compute small primitives only where they can be non-zero
    def window(self, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice] | None:
        c0 = int(np.searchsorted(self.xs, x0))
        c1 = int(np.searchsorted(self.xs, x1))
        r0 = int(np.searchsorted(self.ys, y0))
        r1 = int(np.searchsorted(self.ys, y1))
        if c1 <= c0 or r1 <= r0:
            return None
        return slice(r0, r1), slice(c0, c1)

    # ---- lung-local coordinates: u runs medial -> costophrenic side (frontal: lateral wall; lateral: posterior)
    def to_mm(self, side: int, u: float, v: float) -> tuple[float, float]:
        if self.lateral:
            return self.box_x0 + u * self.box_w, v * self.p.lung_h
        half = self.p.lung_w / 2.0
        return (-1 if side == RIGHT else 1) * u * half, v * self.p.lung_h

    def u_scale(self) -> float:
        return self.box_w if self.lateral else self.p.lung_w / 2.0

    def local_uv(self, side: int, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.xs[cols][None, :], self.ys[rows][:, None]
        sign = -1.0 if side == RIGHT else 1.0
        u = (x - self.box_x0) / self.box_w if self.lateral else sign * x / (self.p.lung_w / 2.0)
        return u, y / self.p.lung_h

    def add_occ(self, side: int, rows: slice, cols: slice, value: np.ndarray) -> None:
        if self.occ[side] is None:
            self.occ[side] = np.zeros((self.h, self.w), np.float32)
        region = self.occ[side][rows, cols]
        region[...] = 1.0 - (1.0 - region) * (1.0 - np.clip(value, 0.0, 1.0))

    def mark(self, name: str, rows: slice, cols: slice, value: np.ndarray) -> None:
        if name not in self.masks:
            self.masks[name] = np.zeros((self.h, self.w), bool)
        self.masks[name][rows, cols] |= value

    def full(self) -> tuple[slice, slice]:
        return slice(0, self.h), slice(0, self.w)


# --------------------------------------------------------------------------------------------------------------------
# lungs from the atlas


def _sample_lungs(scene: _Scene, atlas) -> None:
    """Per side: ``inner_mm`` (distance to the nearest non-lung pixel), ``outer_mm`` (to the costal pleura) and ``air``
    (path length of air, mm)."""
    p, sp = scene.p, scene.sp
    # frontal films draw their own heart into medially extended lungs; laterals use the lungs as drawn
    inner_all, outer_all = atlas.distances(p.atlas_index, raw=scene.lateral)
    size = inner_all.shape[-1]
    scene.inner_mm, scene.outer_mm, scene.depth = [], [], []
    for side in (RIGHT, LEFT):
        inner, outer = inner_all[side], outer_all[side]  # atlas side 0 = image-left = patient right
        height = p.lung_h - p.side_raise[side]
        my = sp * size / height
        oy = (0.5 * sp - scene.apex_film) * size / height - 0.5
        col0 = (scene.w * sp / 2.0 + p.shift_x)  # film x of the patient midline
        if scene.lateral:
            cols = np.flatnonzero(inner.max(axis=0) > 0)
            c_lo, c_hi = float(cols[0]), float(cols[-1] + 1)
            # the medial (cardiac) border faces anterior: mirror the image-left lung
            start, stop = (c_hi, c_lo) if side == RIGHT else (c_lo, c_hi)
            scale = (stop - start) / scene.box_w
            film_x0 = col0 + scene.box_x0
            mx, ox = sp * scale, start + (0.5 * sp - film_x0) * scale - 0.5
            px_mm = scene.box_w / (c_hi - c_lo)
        else:
            mx = sp * size / p.lung_w
            ox = (0.5 * sp - (col0 - p.lung_w / 2.0)) * size / p.lung_w - 0.5
            px_mm = p.lung_w / size
        # sample only the window that can hold this lung; elsewhere the distance is "far outside"
        margin = 12.0
        if scene.lateral:
            x_lo, x_hi = scene.box_x0 - margin, scene.box_x0 + scene.box_w + margin
        elif side == RIGHT:
            x_lo, x_hi = -p.lung_w / 2.0 - margin, 0.15 * p.lung_w
        else:
            x_lo, x_hi = -0.15 * p.lung_w, p.lung_w / 2.0 + margin
        far = -DIST_OFFSET * px_mm
        inner_s = np.full((scene.h, scene.w), far, np.float32)
        outer_s = np.full((scene.h, scene.w), far, np.float32)
        win = scene.window(x_lo, x_hi, -margin, height + margin)
        if win is not None:
            rows, cols = win
            kwargs = dict(matrix=[my, mx], offset=[oy + my * rows.start, ox + mx * cols.start],
                          output_shape=(rows.stop - rows.start, cols.stop - cols.start), order=1,
                          cval=-DIST_OFFSET, prefilter=False)
            inner_s[rows, cols] = ndimage.affine_transform(inner, **kwargs) * px_mm
            outer_s[rows, cols] = ndimage.affine_transform(outer, **kwargs) * px_mm
        g = p.growth
        if scene.lateral:
            max_depth, ramp = 0.42 * p.lung_w, 45.0 * g  # each lung's own width is the lateral path length
        else:
            max_depth, ramp = 0.78 * p.depth, 30.0 * g
        depth = max_depth * np.sqrt(np.clip(inner_s / ramp, 0.0, 1.0))
        scene.inner_mm.append(inner_s)
        scene.outer_mm.append(outer_s)
        scene.depth.append(depth.astype(np.float32))
    # soft lung masks, anti-aliased over one output pixel
    scene.lung = [np.clip(d / max(sp, 0.5) + 0.5, 0.0, 1.0) for d in scene.inner_mm]


# --------------------------------------------------------------------------------------------------------------------
# anatomy


def _chord(t: np.ndarray) -> np.ndarray:
    """Chord length profile of a cylinder/sphere: 2*sqrt(1 - t^2), 0 outside."""
    return 2.0 * np.sqrt(np.clip(1.0 - t * t, 0.0, None))


def _body_frontal(s: _Scene) -> None:
    p, g = s.p, s.g
    X, Y = s.X, s.Y
    chest_half = p.lung_w / 2.0 + p.wall + p.fat
    neck_half = (48.0 + 0.3 * p.fat) * g
    shoulder_half = p.lung_w / 2.0 + (68.0 if not s.ap else 60.0) * g + 0.5 * p.fat
    y_neck, y_shoulder = -95.0 * g, -25.0 * g
    t = np.clip((Y - y_neck) / (y_shoulder - y_neck), 0.0, 1.0)
    half = neck_half + (shoulder_half - neck_half) * np.sqrt(1.0 - (1.0 - t) ** 2)
    # below the shoulder the trunk narrows to the chest wall at the axilla; the arms carry on beside it
    y_axilla = 0.28 * p.lung_h
    k = np.clip((Y - y_shoulder) / (y_axilla - y_shoulder), 0.0, 1.0)
    arm_r = (40.0 * g + 0.4 * p.fat)
    arm_x = chest_half + p.arm_gap + arm_r
    half = np.where(y_shoulder < Y, shoulder_half + (chest_half - shoulder_half) * _smoothstep(k), half)
    half = half + 0.04 * p.lung_w * np.clip((Y - p.lung_h) / 150.0, 0.0, 1.0)  # flanks
    chest_depth_half = p.depth / 2.0 + p.fat * 0.8
    depth_half = chest_depth_half - (chest_depth_half - 55.0 * g) * _smoothstep((y_neck + 40 * g - Y) / (50.0 * g))
    trunk = depth_half * _chord(X / half)
    arms = np.zeros_like(trunk)
    for sign in (-1.0, 1.0):
        arm = arm_r * _chord((X - sign * arm_x) / arm_r) * _smoothstep((Y - y_shoulder) / (40.0 * g))
        arms = np.maximum(arms, arm)
    body = np.maximum(trunk, arms)
    if p.breast_r > 0:
        for sign in (-1.0, 1.0):
            cx, cy, r = sign * 0.52 * p.lung_w / 2.0, 0.78 * p.lung_h, p.breast_r
            rho = np.sqrt(((X - cx) / (1.15 * r)) ** 2 + ((Y - cy) / r) ** 2)
            body = body + 0.3 * r * _chord(rho) * _smoothstep((Y - cy + 0.9 * r) / (0.8 * r))
    s.tissue += body
    s.masks["body"] = body > 2.0
    # humeral heads and shafts, shoulder girdle
    for sign in (-1.0, 1.0):
        hx, hy, hr = sign * (shoulder_half - 30.0 * g), -12.0 * g, 22.0 * g
        win = s.window(hx - 2 * hr, hx + 2 * hr, hy - 2 * hr, p.lung_h * 1.6)
        if win is None:
            continue
        rows, cols = win
        x, y = s.xs[cols][None, :], s.ys[rows][:, None]
        head = _chord(np.hypot(x - hx, y - hy) / hr) * hr * 0.3
        shaft_x = hx + sign * 8.0 * g + sign * (y - hy) * 0.08
        shaft = _bone_band(np.abs(x - shaft_x) / (11.0 * g)) * 12.0 * g * (y > hy)
        s.bone[rows, cols] += np.maximum(head, shaft)


def _bone_band(t: np.ndarray) -> np.ndarray:
    """Cross-section of a tubular bone (|t| < 1): bright cortices, lighter medulla."""
    inside = np.clip(1.0 - t * t, 0.0, None)
    cortex = np.exp(-(((np.abs(t) - 0.82) / 0.16) ** 2))
    return (0.45 * np.sqrt(inside) + 0.55 * cortex * (np.abs(t) < 1.1)).astype(np.float32)


def _posterior_rib_curve(u, lung_h: float):
    """Vertical offset (mm) of a posterior rib at lateral fraction ``u``: nearly flat medially, turning down at the wall."""
    return lung_h * (-0.03 * u + 0.1 * u**2 + 0.06 * u**3 + 1.2 * np.clip(u - 0.85, 0.0, None) ** 2)


def _ribs_frontal(s: _Scene, fractures: list[tuple[int, int, float, float]]) -> None:
    """Posterior ribs (curving down laterally) and fainter anterior ribs (running down medially)."""
    p, g = s.p, s.g
    half = p.lung_w / 2.0
    rows, cols = s.window(-half - 40 * g, half + 40 * g, -40.0 * g, p.lung_h * 1.12)
    x, y = s.xs[cols][None, :], s.ys[rows][:, None]
    u = np.abs(x) / half
    side = np.where(x < 0, RIGHT, LEFT)
    pitch = p.lung_h / 10.5
    width = 0.42 * pitch
    y_first = -0.04 * p.lung_h
    lateral_fade = (0.4 + 0.6 * _smoothstep((1.02 - u) / 0.1)) * _smoothstep((1.12 - u) / 0.05) * _smoothstep(
        (u - 0.1) / 0.06)

    def rib_field(offset: np.ndarray, count: int, thin: float) -> tuple[np.ndarray, np.ndarray]:
        t = (y - offset - y_first) / pitch
        k = np.floor(t + 0.5)
        frac = (t - k) * pitch / (width * thin / 2.0)
        valid = (k >= 0) & (k < count)
        return _bone_band(frac) * valid, k

    post_curve = _posterior_rib_curve(u, p.lung_h)
    post, k_post = rib_field(post_curve, 10, 1.0)
    for rib_side, rib_k, u_break, step in fractures:
        mask = (side == rib_side) & (k_post == rib_k)
        shifted, k_shift = rib_field(post_curve + step, 10, 1.0)
        beyond = u > u_break
        post = np.where(mask & beyond, 0.0, post)
        post = np.where((side == rib_side) & beyond & (k_shift == rib_k), shifted, post)
        gap = (side == rib_side) & (np.abs(u - u_break) * half < 3.0 * g + 0.6 * s.sp) & (
            (k_post == rib_k) | (k_shift == rib_k))
        post = np.where(gap, 0.0, post)
    ant_curve = p.lung_h * (0.1 + 0.3 * np.clip(1.0 - u, 0.0, None) ** 1.2)
    ant, _ = rib_field(ant_curve, 7, 0.85)
    ant = ant * _smoothstep((u - 0.3) / 0.15)
    s.bone[rows, cols] += (5.5 * g * post + 2.5 * g * ant) * lateral_fade


def _spine_frontal(s: _Scene) -> None:
    p, g = s.p, s.g
    half_w = 0.08 * p.lung_w
    rows, cols = s.window(-2.2 * half_w, 2.2 * half_w, -np.inf, np.inf)
    x, y = s.xs[cols][None, :], s.ys[rows][:, None]
    pitch = 0.092 * p.lung_h
    t = (y + 0.3 * pitch) / pitch
    phase = t - np.floor(t)
    body_profile = _smoothstep((1.0 - np.abs(x) / half_w) / 0.1)
    disc = 1.0 - 0.5 * np.exp(-(((phase - 0.05) / 0.06) ** 2))
    endplate = 0.3 * np.exp(-(((phase - 0.14) / 0.04) ** 2)) + 0.3 * np.exp(-(((phase - 0.95) / 0.04) ** 2))
    vertebra = body_profile * (0.5 * _chord(x / half_w) * disc + endplate + 0.3 * _bone_band(x / half_w)) * 9.0 * g
    pedicle = np.zeros_like(vertebra)
    for sign in (-1.0, 1.0):
        rho = np.hypot((x - sign * 0.7 * half_w) / (0.22 * half_w), (phase - 0.42) / 0.18)
        pedicle += 0.5 * _bone_band(rho) * 10.0 * g
    spinous = np.exp(-((x / (0.12 * half_w)) ** 2 + ((phase - 0.65) / 0.12) ** 2)) * 6.0 * g
    s.bone[rows, cols] += vertebra + pedicle + spinous
    spine = np.zeros((s.h, s.w), bool)
    spine[rows, cols] = body_profile > 0.5
    s.masks["spine"] = spine


def _clavicles_scapulae_frontal(s: _Scene) -> None:
    p, g = s.p, s.g
    half = p.lung_w / 2.0
    y_med = (-0.02 if s.ap else 0.035) * p.lung_h - 0.3 * p.kyphosis
    rise = (0.02 if s.ap else 0.085) * p.lung_h
    for sign in (-1.0, 1.0):
        x_med, x_lat = 18.0 * g, half + 40.0 * g
        win = s.window(min(sign * x_med, sign * x_lat) - 15, max(sign * x_med, sign * x_lat) + 15,
                       y_med - rise - 40 * g, y_med + 30 * g)
        if win is not None:
            rows, cols = win
            x, y = s.xs[cols][None, :], s.ys[rows][:, None]
            t = np.clip((sign * x - x_med) / (x_lat - x_med), 0.0, 1.0)
            centre = y_med - rise * t + 0.025 * p.lung_h * np.sin(2 * np.pi * t)
            thick = (7.5 - 2.0 * t) * g
            inside = ((sign * x) > x_med - 4 * g) & ((sign * x) < x_lat)
            s.bone[rows, cols] += 11.0 * g * _bone_band((y - centre) / thick) * inside
        # scapula: medial border lateral to the lungs on PA (rotated forward), over the lungs on AP
        border_top = half * (0.8 if s.ap else 1.0)
        border_tip = half * (0.66 if s.ap else 0.93)
        y_top, y_tip = 0.0, 0.5 * p.lung_h
        win = s.window(min(sign * border_tip, sign * (half + 80 * g)) - 10,
                       max(sign * border_tip, sign * (half + 80 * g)) + 10, y_top - 20, y_tip + 10)
        if win is None:
            continue
        rows, cols = win
        x, y = s.xs[cols][None, :], s.ys[rows][:, None]
        t = np.clip((y - y_top) / (y_tip - y_top), 0.0, 1.0)
        x_border = border_top + (border_tip - border_top) * t
        x_lateral = half + 65.0 * g - (half + 65.0 * g - border_tip) * t**1.5
        ax = sign * x
        plate = _smoothstep((ax - x_border) / 3.0) * _smoothstep((x_lateral - ax) / 6.0) * (y > y_top) * (y < y_tip)
        edge = np.exp(-(((ax - x_border) / (2.5 * g)) ** 2)) * (y > y_top) * (y < y_tip)
        s.bone[rows, cols] += (3.5 * plate + 5.0 * edge) * g


def _heart_and_mediastinum_frontal(s: _Scene, mediastinum_scale: float) -> np.ndarray:
    """Returns the fraction of lung air displaced by the heart and mediastinum."""
    p, g = s.p, s.g
    magnification = 1.12 if s.ap else 1.0  # AP films magnify the heart (~10-20%, standard radiology teaching)
    heart_w = p.ctr * p.lung_w * magnification
    b = 0.27 * p.lung_h
    theta = p.heart_tilt
    a_sq = (heart_w / 2.0) ** 2 - (b * np.sin(theta)) ** 2
    a = np.sqrt(max(a_sq, (0.3 * heart_w) ** 2)) / np.cos(theta)
    half_extent = np.sqrt((a * np.cos(theta)) ** 2 + (b * np.sin(theta)) ** 2)
    cx = -0.34 * heart_w + half_extent  # a third of the heart lies right of the midline
    cy = 0.9 * p.lung_h - 0.5 * b
    displaced = np.zeros((s.h, s.w), np.float32)
    heart_mask = np.zeros((s.h, s.w), bool)
    reach = max(a, b)
    win = s.window(cx - reach, cx + reach, cy - reach, cy + reach)
    if win is not None:
        rows, cols = win
        dx, dy = s.xs[cols][None, :] - cx, s.ys[rows][:, None] - cy
        ct, st = np.cos(theta), np.sin(theta)
        r = np.sqrt(((dx * ct + dy * st) / a) ** 2 + ((-dx * st + dy * ct) / b) ** 2)
        displaced[rows, cols] = 0.88 * _smoothstep((1.0 - r) / 0.1)
        s.tissue[rows, cols] += 9.0 * g * _chord(r)  # myocardium/blood a little denser than the displaced lung
        heart_mask[rows, cols] = r < 1.0
    s.masks["heart"] = heart_mask
    # upper mediastinum with the aortic knob on the patient's left
    med_half = p.mediastinum_ratio * p.lung_w / 2.0 * mediastinum_scale * magnification ** 0.5
    y_heart_top = cy - b * 0.8
    med_mask = np.zeros((s.h, s.w), bool)
    win = s.window(-med_half * 1.2 - 10 * g, med_half + 10 * g, -np.inf, y_heart_top + 50 * g)
    if win is not None:
        rows, cols = win
        x, y = s.xs[cols][None, :], s.ys[rows][:, None]
        upper = _smoothstep((med_half - np.abs(x + 0.08 * med_half)) / (8.0 * g)) * _smoothstep(
            (y_heart_top + 25 * g - y) / (20.0 * g))
        displaced[rows, cols] = np.maximum(displaced[rows, cols], 0.92 * upper)
        med_mask[rows, cols] = upper > 0.5
    knob_x, knob_y = med_half * 0.7 + p.knob * 0.5, 0.3 * p.lung_h
    win = s.window(knob_x - p.knob, knob_x + p.knob, knob_y - p.knob, knob_y + p.knob)
    if win is not None:
        rows, cols = win
        x, y = s.xs[cols][None, :], s.ys[rows][:, None]
        knob = 0.8 * _smoothstep((1.0 - np.hypot(x - knob_x, y - knob_y) / p.knob) / 0.3)
        displaced[rows, cols] = np.maximum(displaced[rows, cols], 0.92 * knob)
        med_mask[rows, cols] |= knob > 0.5
    s.masks["mediastinum"] = med_mask
    # descending aorta edge down the left heart border area
    aorta_half = 0.6 * med_half + 12 * g
    win = s.window(0.45 * med_half - aorta_half - 4 * g, 0.45 * med_half + aorta_half + 4 * g, knob_y, p.lung_h)
    if win is not None:
        rows, cols = win
        aorta = _smoothstep((aorta_half - np.abs(s.xs[cols][None, :] - 0.45 * med_half)) / (3.0 * g))
        displaced[rows, cols] = np.maximum(displaced[rows, cols], 0.64 * aorta)
    # hila: vascular density at the lung roots
    for sign in (-1.0, 1.0):
        hx, hy = sign * (med_half + 0.08 * p.lung_w), p.hilum_y * p.lung_h
        sx, sy = 0.05 * p.lung_w, 0.08 * p.lung_h
        win = s.window(hx - 3 * sx, hx + 3 * sx, hy - 3 * sy, hy + 3 * sy)
        if win is not None:
            rows, cols = win
            hil = np.exp(-(((s.xs[cols][None, :] - hx) / sx) ** 2 + ((s.ys[rows][:, None] - hy) / sy) ** 2))
            s.tissue[rows, cols] += 22.0 * g * hil
    return displaced


def _trachea_frontal(s: _Scene) -> None:
    p, g = s.p, s.g
    carina = 0.33 * p.lung_h
    width = 8.0 * g
    tx = -0.01 * p.lung_w
    win = s.window(tx - 0.2 * p.lung_h, tx + 0.2 * p.lung_h, -np.inf, carina + 0.2 * p.lung_h)
    if win is None:
        return
    rows, cols = win
    X, Y = s.xs[cols][None, :], s.ys[rows][:, None]
    trachea = _smoothstep((width - np.abs(X - tx)) / (2.0 * g)) * (carina > Y)
    bronchi = np.zeros_like(trachea)
    for sign, angle, length in ((-1.0, 0.5, 0.13), (1.0, 0.8, 0.17)):
        ex, ey = tx + sign * np.sin(angle) * length * p.lung_h, carina + np.cos(angle) * length * p.lung_h
        d = _segment_distance(X, Y, (tx, carina), (ex, ey))
        bronchi = np.maximum(bronchi, _smoothstep((0.8 * width - d) / (2.0 * g)))
    s.tissue[rows, cols] -= 16.0 * g * np.maximum(trachea, bronchi)


def _segment_distance(X, Y, a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
    ax, ay = a
    bx, by = b
    vx, vy = bx - ax, by - ay
    t = np.clip(((X - ax) * vx + (Y - ay) * vy) / (vx * vx + vy * vy + 1e-9), 0.0, 1.0)
    return np.hypot(X - ax - t * vx, Y - ay - t * vy)


def _body_lateral(s: _Scene) -> None:
    p, g = s.p, s.g
    X, Y = s.X, s.Y
    front = s.box_x0 - p.wall - p.fat * 0.8  # anterior skin
    back = s.box_x0 + s.box_w + 45.0 * g + p.fat * 0.6  # posterior skin over the paraspinal muscles
    centre, half_depth = (front + back) / 2.0, (back - front) / 2.0
    width_half = p.lung_w / 2.0 + p.wall + p.fat
    neck_y = -80.0 * g
    neck = _smoothstep((neck_y + 30 * g - Y) / (30.0 * g))
    half_d = half_depth * (1.0 - 0.35 * neck)
    cx = centre + 0.15 * half_depth * neck
    trunk = width_half * (1.0 - 0.55 * neck) * _chord((X - cx) / half_d)
    arms = np.zeros_like(trunk)
    # raised arms cross the upper film obliquely in front of the shoulders
    arm_r = 38.0 * g + 0.3 * p.fat
    a0 = (centre + 0.1 * half_depth, 0.05 * p.lung_h)
    a1 = (front - 60.0 * g, -0.55 * p.lung_h)
    d = _segment_distance(X, Y, a0, a1)
    arms = 2.0 * arm_r * _chord(d / arm_r) * 0.5
    body = np.maximum(trunk, arms) + 0.5 * arms
    if p.breast_r > 0:
        bx, by, r = front + 0.15 * p.breast_r, 0.78 * p.lung_h, p.breast_r
        rho = np.hypot((X - bx) / (0.8 * r), (Y - by) / r)
        body = body + 2.0 * r * _chord(rho) * 0.5 * (bx + 0.5 * r > X)
    s.tissue += body
    s.masks["body"] = body > 2.0
    # humeri inside the arms
    s.bone += _bone_band(d / (11.0 * g)) * 8.0 * g
    # sternum
    sx = s.box_x0 - p.wall * 0.5
    sternum = _bone_band((X - sx) / (7.0 * g)) * (0.02 * p.lung_h < Y) * (0.7 * p.lung_h > Y)
    s.bone += sternum * 14.0 * g
    s.front, s.back = front, back


def _spine_lateral(s: _Scene) -> None:
    p, g = s.p, s.g
    X, Y = s.X, s.Y
    body_depth = 0.17 * p.depth
    x0 = s.box_x0 + s.box_w - 0.16 * s.box_w
    bulge = p.kyphosis * np.sin(np.clip(Y / (1.2 * p.lung_h), 0.0, 1.0) * np.pi)
    cx = x0 + bulge - 0.02 * Y
    pitch = 0.092 * p.lung_h
    t = (Y + 0.3 * pitch) / pitch
    phase = t - np.floor(t)
    # wedging of the mid-thoracic bodies with age
    inside = _smoothstep((body_depth / 2.0 - np.abs(X - cx)) / (2.0 * g))
    disc = 1.0 - 0.8 * np.exp(-(((phase - 0.05) / 0.07) ** 2))
    endplate = 0.5 * np.exp(-(((phase - 0.15) / 0.04) ** 2)) + 0.5 * np.exp(-(((phase - 0.94) / 0.04) ** 2))
    cortex = 0.6 * np.exp(-(((np.abs(X - cx) - body_depth / 2.0 + 1.5 * g) / (1.8 * g)) ** 2))
    vertebra = (inside * (0.6 * disc + endplate) + cortex * disc) * 20.0 * g
    posterior = _smoothstep((10.0 * g - np.abs(X - cx - body_depth * 1.0)) / (3.0 * g)) * (phase > 0.3) * (
        phase < 0.85) * 6.0 * g
    s.bone += vertebra + posterior
    s.masks["spine"] = inside > 0.5
    # posterior ribs: faint oblique arcs behind the heart
    pitch_r = p.lung_h / 10.5
    for offset in (0.0, 0.35):
        tr = (Y - 0.12 * (X - x0) - offset * pitch_r) / pitch_r
        fr = (tr - np.floor(tr + 0.5)) * pitch_r / (0.2 * pitch_r)
        span = _smoothstep((X - s.box_x0 - 0.45 * s.box_w) / 30.0) * (x0 + 30 * g > X) * (Y > 0) * (p.lung_h > Y)
        s.bone += 3.5 * g * _bone_band(fr) * span


def _heart_and_mediastinum_lateral(s: _Scene, mediastinum_scale: float) -> np.ndarray:
    p, g = s.p, s.g
    X, Y = s.X, s.Y
    scale = p.ctr / 0.45
    a = 0.3 * s.box_w * scale ** 1.1
    b = 0.25 * p.lung_h * scale ** 0.5
    cx = s.box_x0 + 0.02 * s.box_w + a * 0.9
    cy = 1.0 * p.lung_h - 0.55 * b
    theta = -0.55
    dx, dy = X - cx, Y - cy
    r = np.sqrt(((dx * np.cos(theta) + dy * np.sin(theta)) / a) ** 2 + ((-dx * np.sin(theta) + dy * np.cos(theta)) / b)
                ** 2)
    heart = _smoothstep((1.0 - r) / 0.35)
    s.masks["heart"] = r < 1.0
    # great vessels/mediastinum behind the retrosternal clear space; widening fills that space
    med_front = s.box_x0 + (0.32 - 0.12 * (mediastinum_scale - 1.0)) * s.box_w
    med_back = s.box_x0 + 0.62 * s.box_w
    upper = _smoothstep((X - med_front) / (5.0 * g)) * _smoothstep((med_back - X) / (5.0 * g)) * (cy > Y)
    s.masks["mediastinum"] = upper > 0.5
    # trachea
    tx = s.box_x0 + 0.5 * s.box_w + 0.06 * Y
    trachea = _smoothstep((7.0 * g - np.abs(X - tx)) / (2.0 * g)) * _smoothstep((0.36 * p.lung_h - Y) / (15 * g))
    s.tissue -= 18.0 * g * trachea
    return np.maximum(0.55 * heart, 0.12 * upper)


def _vessels(s: _Scene, rng: np.random.Generator) -> np.ndarray:
    """Lung markings: branching vessel trees from each hilum, as soft-tissue path length (mm)."""
    p, g, sp = s.p, s.g, s.sp
    trunk_x, trunk_y, trunk_a = [], [], []
    for side in (RIGHT, LEFT):
        if s.lateral:
            hx, hy = s.box_x0 + 0.5 * s.box_w, p.hilum_y * p.lung_h
            angles = rng.uniform(-np.pi, np.pi, 7)
        else:
            sign = -1.0 if side == RIGHT else 1.0
            hx = sign * (p.mediastinum_ratio * p.lung_w / 2.0 + 0.06 * p.lung_w)
            hy = p.hilum_y * p.lung_h
            base = np.pi if side == RIGHT else 0.0
            spread = np.linspace(-1.25, 1.35, 7) + rng.normal(0, 0.08, 7)
            angles = base + (-spread if side == RIGHT else spread)
        # trunks leave the hilum from a spread of points, not one, so the pattern does not look like a star
        start = rng.uniform(8.0, 22.0, 7) * g
        trunk_x.append(hx + start * np.cos(angles) + rng.normal(0, 5 * g, 7))
        trunk_y.append(hy + start * np.sin(angles) + rng.normal(0, 10 * g, 7))
        trunk_a.append(angles)
    x, y, ang = np.concatenate(trunk_x), np.concatenate(trunk_y), np.concatenate(trunk_a)
    length = rng.uniform(0.14, 0.2, x.size) * p.lung_h
    caliber = 5.0 * g
    points: list[tuple[np.ndarray, np.ndarray, float]] = []
    for level in range(5):  # each level bifurcates: 14 trunks -> 224 twigs, drawn level by level
        n = max(2, int(length.max() / (0.5 * sp)))
        t = np.linspace(0.0, 1.0, n, dtype=np.float32)[None, :]
        bend = rng.normal(0, 0.15, x.size)[:, None]
        angles = ang[:, None] + bend * t
        step = (length / n)[:, None]
        xs = x[:, None] + np.cumsum(np.cos(angles), axis=1) * step
        ys = y[:, None] + np.cumsum(np.sin(angles), axis=1) * step
        points.append((xs.ravel(), ys.ravel(), caliber))
        if level < 4:
            split = rng.uniform(0.25, 0.55, (x.size, 2)) * np.array([-1.0, 1.0])
            x, y = np.repeat(xs[:, -1], 2), np.repeat(ys[:, -1], 2)
            ang = (angles[:, -1:] + split).ravel()
            length = np.repeat(length, 2) * rng.uniform(0.55, 0.75, x.size)
            caliber *= 0.7
    texture = np.zeros((s.h, s.w), np.float32)
    x0 = s.box_x0 - 12.0
    win = s.window(x0, x0 + s.box_w + 24.0, -12.0, p.lung_h + 12.0)
    if win is None:
        return texture
    rows, cols = win
    for thick, sigma_mm in ((False, 1.0), (True, 2.2)):
        chosen = [pt for pt in points if (pt[2] > 3.0 * g) == thick]
        xs = np.concatenate([pt[0] for pt in chosen])
        ys = np.concatenate([pt[1] for pt in chosen])
        cal = np.concatenate([np.full(pt[0].size, pt[2], np.float32) for pt in chosen])
        c = np.rint((xs - s.xs[cols.start]) / sp).astype(np.int64)
        r = np.rint((ys - s.ys[rows.start]) / sp).astype(np.int64)
        ok = (r >= 0) & (r < rows.stop - rows.start) & (c >= 0) & (c < cols.stop - cols.start)
        splat = np.zeros((rows.stop - rows.start, cols.stop - cols.start), np.float32)
        np.add.at(splat, (r[ok], c[ok]), cal[ok] * 0.5)
        sigma = max(0.7, sigma_mm * g / sp)
        texture[rows, cols] += ndimage.gaussian_filter(splat, sigma, truncate=3.0) * (2.5 * sigma)
    # fine parenchymal pattern (small vessels and interstitium below the tree's resolution); it is what vanishes
    # first in a pneumothorax rim, so the rim reads as featureless at any size
    sigma = max(0.8, 1.6 / sp)
    speckle = ndimage.gaussian_filter(
        rng.standard_normal((rows.stop - rows.start, cols.stop - cols.start), dtype=np.float32), sigma, truncate=2.5)
    texture *= 0.8 if s.lateral else 2.4
    texture[rows, cols] += 5.0 * g * speckle / (speckle.std() + 1e-6)
    return texture


# --------------------------------------------------------------------------------------------------------------------
# findings


def _sides(laterality: str, rng: np.random.Generator, bilateral_p: float) -> tuple[int, ...]:
    lat = (laterality or "").strip().lower()
    if lat in _SIDE_NAMES:
        return _SIDE_NAMES[lat]
    if rng.random() < bilateral_p:
        return (RIGHT, LEFT)
    return (RIGHT,) if rng.random() < 0.5 else (LEFT,)


def _blob(s: _Scene, side: int, u0: float, v0: float, ru_mm: float, rv_mm: float, rng: np.random.Generator,
          density: float, roughness: float, edge: float) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """An irregular opacity centred at lung coordinates (u0, v0), radii in mm; returns its occupancy on a window."""
    cx, cy = s.to_mm(side, u0, v0)
    win = s.window(cx - 1.8 * ru_mm, cx + 1.8 * ru_mm, cy - 1.8 * rv_mm, cy + 1.8 * rv_mm)
    if win is None:
        return None
    rows, cols = win
    x, y = s.xs[cols][None, :], s.ys[rows][:, None]
    r = np.sqrt(((x - cx) / ru_mm) ** 2 + ((y - cy) / rv_mm) ** 2)
    coarse = rng.standard_normal((7, 7)).astype(np.float32)
    coarse = ndimage.gaussian_filter(coarse, 0.8)
    coarse /= coarse.std() + 1e-6
    gy = (y - cy + 1.8 * rv_mm) / (3.6 * rv_mm) * 6.0
    gx = (x - cx + 1.8 * ru_mm) / (3.6 * ru_mm) * 6.0
    gy, gx = np.broadcast_arrays(gy, gx)
    noise = ndimage.map_coordinates(coarse, [gy.ravel(), gx.ravel()], order=1, mode="nearest").reshape(gy.shape)
    mottle = 0.75 + 0.25 * np.cos(noise * 3.0)
    value = density * mottle * _smoothstep((1.0 - r + roughness * noise) / edge) * _smoothstep((1.75 - r) / 0.3)
    return win, value.astype(np.float32)


def _apply_blob(s: _Scene, side: int, blob, name: str) -> None:
    if blob is None:
        return
    (rows, cols), value = blob
    lung = s.lung[side][rows, cols]
    s.add_occ(side, rows, cols, value * lung)
    s.mark(name, rows, cols, (value > 0.3) & (lung > 0.5))


def _effusion(s: _Scene, rng: np.random.Generator, laterality: str) -> None:
    p = s.p
    for side in _sides(laterality, rng, 0.35):
        level = 1.0 - rng.uniform(0.2, 0.45)  # fluid top, fraction of the lung height (severity)
        meniscus = rng.uniform(0.16, 0.26)
        rows, cols = s.window(-np.inf, np.inf, (level - meniscus - 0.05) * p.lung_h, np.inf)
        u, v = s.local_uv(side, rows, cols)
        top = level - meniscus * np.clip(u, 0.0, 1.1) ** 3
        fluid = np.clip((v - top) * p.lung_h / (14.0 * s.g) + 0.35, 0.0, 1.0)
        region = s.lung[side][rows, cols]
        s.add_occ(side, rows, cols, fluid * region)
        s.tissue[rows, cols] += 8.0 * s.g * fluid * region  # fluid is slightly denser than the lung it replaces
        s.no_vessels[rows, cols] = np.maximum(s.no_vessels[rows, cols], fluid * region)
        s.mark("effusion", rows, cols, (fluid > 0.5) & (region > 0.5))


def _pneumothorax(s: _Scene, rng: np.random.Generator, laterality: str) -> None:
    g = s.g
    for side in _sides(laterality, rng, 0.08):
        rim = rng.uniform(14.0, 38.0) * g  # mm of apical-lateral pleural air (size)
        rows, cols = s.full()
        _, v = s.local_uv(side, rows, cols)
        width = rim * np.clip(1.35 - 1.1 * v, 0.0, None) * _smoothstep((0.9 - v) / 0.15)
        outer = s.outer_mm[side]
        lung = s.lung[side]
        air_space = (outer < width) * lung
        if s.occ[side] is None:
            s.occ[side] = np.zeros((s.h, s.w), np.float32)
        if s.boost[side] is None:
            s.boost[side] = np.zeros((s.h, s.w), np.float32)
        # pleural space: pure air (no lung tissue, no markings); collapsed lung a little denser
        # on a lateral the pleural air is seen en face over the overlapping lungs: a larger share of the path
        s.boost[side] += (0.5 if s.lateral else 0.28) * air_space
        s.no_vessels = np.maximum(s.no_vessels, air_space)
        collapsed = (outer >= width) * lung * (width > 0)
        s.add_occ(side, rows, cols, 0.12 * collapsed)
        line = np.exp(-(((outer - width) / (0.9 * g + 0.4 * s.sp)) ** 2)) * (width > 2.0) * lung
        s.tissue += 10.0 * g * line
        s.mark("pneumothorax", rows, cols, air_space > 0.5)


def _airspace(s: _Scene, rng: np.random.Generator, laterality: str, kind: str) -> None:
    p, g = s.p, s.g
    if kind == "Consolidation":
        sides, count, size, density = _sides(laterality, rng, 0.15), (1, 2), (0.22, 0.34), (0.8, 0.95)
    elif kind == "Pneumonia":
        sides, count, size, density = _sides(laterality, rng, 0.3), (2, 4), (0.12, 0.2), (0.6, 0.85)
    else:  # Lung Opacity: patchy, softer, anywhere
        sides, count, size, density = _sides(laterality, rng, 0.4), (1, 3), (0.15, 0.26), (0.45, 0.7)
    for side in sides:
        lower = rng.random() < (0.7 if kind != "Lung Opacity" else 0.5)
        for _ in range(int(rng.integers(count[0], count[1] + 1))):
            v0 = rng.uniform(0.55, 0.8) if lower else rng.uniform(0.18, 0.45)
            u0 = rng.uniform(0.4, 0.75)
            r = rng.uniform(*size) * p.lung_h
            blob = _blob(s, side, u0, v0, r * rng.uniform(0.7, 1.0), r, rng, rng.uniform(*density), 0.35, 0.6)
            if blob is not None and kind == "Consolidation" and side == RIGHT and not lower and not s.lateral:
                (rows, _), value = blob
                fissure = 0.5 * p.lung_h  # right upper-lobe consolidation stops sharply at the minor fissure
                value *= _smoothstep((fissure - s.ys[rows][:, None]) / (3.0 * g))
            _apply_blob(s, side, blob, "opacity")
            if blob is not None and kind == "Consolidation":
                (rows, cols), value = blob
                s.no_vessels[rows, cols] = np.maximum(s.no_vessels[rows, cols], value * s.lung[side][rows, cols])


def _lesion(s: _Scene, rng: np.random.Generator, laterality: str) -> None:
    g = s.g
    sides = _sides(laterality, rng, 0.1)
    mass = rng.random() < 0.35
    count = 1 if mass else int(rng.integers(1, 4))
    for i in range(count):
        side = sides[i % len(sides)]
        radius = (rng.uniform(18.0, 35.0) if mass else rng.uniform(9.0, 16.0)) * g  # nodules 18-32 mm, masses > 30 mm
        cx, cy = s.to_mm(side, rng.uniform(0.35, 0.7), rng.uniform(0.2, 0.72))
        win = s.window(cx - 1.3 * radius, cx + 1.3 * radius, cy - 1.3 * radius, cy + 1.3 * radius)
        if win is None:
            continue
        rows, cols = win
        x, y = s.xs[cols][None, :], s.ys[rows][:, None]
        angle = np.arctan2(y - cy, x - cx)
        lobulated = radius * (1.0 + 0.07 * np.sin(3 * angle + rng.uniform(0, 6.3)))
        rho = np.hypot(x - cx, y - cy) / lobulated
        chord = radius * _chord(rho)
        lung = s.lung[side][rows, cols]
        s.tissue[rows, cols] += 2.5 * chord * lung  # a solid sphere in aerated lung, exaggerated for thumbnails
        s.no_vessels[rows, cols] = np.maximum(s.no_vessels[rows, cols], rho < 1)
        s.mark("lesion", rows, cols, (rho < 1.0) & (lung > 0.5))


def _edema(s: _Scene, rng: np.random.Generator, laterality: str) -> None:
    p, g = s.p, s.g
    lat = (laterality or "").strip().lower()
    weights = {RIGHT: 1.0, LEFT: 1.0}
    if lat in ("left", "right"):
        weights[RIGHT if lat == "left" else LEFT] = 0.35  # asymmetric edema still shows on both sides
    severity = rng.uniform(0.75, 0.95)
    rows, cols = s.full()
    for side in (RIGHT, LEFT):
        u, v = s.local_uv(side, rows, cols)
        hu = 0.5 if s.lateral else 0.25
        bat = np.exp(-(((u - hu) / 0.5) ** 2 + ((v - p.hilum_y - 0.1) / 0.35) ** 2))
        base = 0.35 * _smoothstep((v - 0.4) / 0.4)
        value = weights[side] * severity * np.clip(bat + base, 0.0, 1.0) * s.lung[side]
        s.add_occ(side, rows, cols, value)
        s.mark("opacity", rows, cols, value > 0.3)
        # Kerley B lines: short horizontal septal lines at the lateral bases, reaching the pleura
        for _ in range(int(rng.integers(5, 10))):
            ly = rng.uniform(0.62, 0.92)
            x_wall, y_line = s.to_mm(side, 1.0, ly)
            length = rng.uniform(12.0, 22.0) * g
            x_in = x_wall - (length if (s.lateral or side == LEFT) else -length)
            win = s.window(min(x_wall, x_in) - 2, max(x_wall, x_in) + 2, y_line - 3 * g, y_line + 3 * g)
            if win is None:
                continue
            r2, c2 = win
            y = s.ys[r2][:, None]
            line = np.exp(-(((y - y_line) / (0.9 * g + 0.3 * s.sp)) ** 2)) * s.lung[side][r2, c2]
            s.tissue[r2, c2] += 9.0 * g * line * weights[side]


def _atelectasis_plan(patient: _Patient, rng: np.random.Generator, laterality: str) -> tuple[int, ...]:
    sides = _sides(laterality, rng, 0.2)
    for side in sides:
        patient.side_raise[side] = rng.uniform(0.07, 0.12) * patient.lung_h  # volume loss lifts the hemidiaphragm
    return sides


def _atelectasis(s: _Scene, rng: np.random.Generator, sides: tuple[int, ...]) -> None:
    g = s.g
    for side in sides:
        for _ in range(int(rng.integers(1, 3))):
            u0, v0 = rng.uniform(0.35, 0.7), rng.uniform(0.6, 0.8)
            cx, cy = s.to_mm(side, u0, v0)
            length, thick = rng.uniform(45.0, 80.0) * g, rng.uniform(6.0, 11.0) * g
            angle = rng.uniform(-0.3, 0.3)
            half = length / 2.0
            a = (cx - half * np.cos(angle), cy - half * np.sin(angle))
            b = (cx + half * np.cos(angle), cy + half * np.sin(angle))
            win = s.window(cx - half - thick, cx + half + thick, cy - half - thick, cy + half + thick)
            if win is None:
                continue
            rows, cols = win
            d = _segment_distance(s.xs[cols][None, :], s.ys[rows][:, None], a, b)
            plate = _smoothstep((thick / 2.0 - d) / (2.0 * g) + 0.5)
            lung = s.lung[side][rows, cols]
            s.add_occ(side, rows, cols, 0.5 * plate * lung)
            s.mark("atelectasis", rows, cols, (plate > 0.5) & (lung > 0.5))


def _pleural_other(s: _Scene, rng: np.random.Generator, laterality: str) -> None:
    p, g = s.p, s.g
    rows, cols = s.full()
    for side in _sides(laterality, rng, 0.45):
        thickness = rng.uniform(6.0, 14.0) * g
        _, v = s.local_uv(side, rows, cols)
        lo, hi = rng.uniform(0.1, 0.35), rng.uniform(0.75, 0.98)
        span = _smoothstep((v - lo) / 0.08) * _smoothstep((hi - v) / 0.08)
        wobble = 1.0 + 0.35 * np.sin(v * rng.uniform(12, 25) + rng.uniform(0, 6.3))
        band = _smoothstep((thickness * wobble - s.outer_mm[side]) / (2.0 * g)) * span * s.lung[side]
        s.add_occ(side, rows, cols, band)
        s.tissue += 6.0 * g * band
        if rng.random() < 0.5:  # calcified plaques
            for _ in range(int(rng.integers(2, 5))):
                pv = rng.uniform(lo + 0.05, hi - 0.05)
                plaque = np.exp(-(((v - pv) * p.lung_h / (9.0 * g)) ** 2)) * band
                s.bone += 5.0 * g * plaque
        s.no_vessels = np.maximum(s.no_vessels, band)
        s.mark("pleural_other", rows, cols, band > 0.5)


def _fracture_plan(rng: np.random.Generator, laterality: str, g: float, lung_h: float) -> list:
    side = _sides(laterality, rng, 0.0)[0]
    first = int(rng.integers(3, 8))
    count = int(rng.integers(1, 4))
    u_break = float(rng.uniform(0.6, 0.92))
    return [(side, k, u_break + 0.02 * (k - first), float(rng.uniform(0.25, 0.45) * lung_h / 10.5) *
             (1 if rng.random() < 0.5 else -1)) for k in range(first, first + count)]


def _fracture_signs(s: _Scene, fractures: list, rng: np.random.Generator) -> None:
    """Mask of the broken rib segments plus an extrapleural haematoma along the wall at the fracture site (a
    lenticular, pleural-based opacity that stays visible at thumbnail resolution)."""
    p, g = s.p, s.g
    pitch = p.lung_h / 10.5
    for side, k, u_break, _ in fractures:
        x, _y = s.to_mm(side, u_break, 0.0)
        y_mid = -0.04 * p.lung_h + k * pitch + float(_posterior_rib_curve(np.float32(u_break), p.lung_h))
        if not s.lateral:
            win = s.window(x - 8 * g, x + 8 * g, y_mid - 0.6 * pitch, y_mid + 0.6 * pitch)
            if win is not None:
                s.mark("fracture", win[0], win[1], np.ones((win[0].stop - win[0].start,
                                                            win[1].stop - win[1].start), bool))
    side, k, _, _ = fractures[len(fractures) // 2]
    y_mid = -0.04 * p.lung_h + k * pitch + float(_posterior_rib_curve(np.float32(0.95), p.lung_h))
    v = y_mid / p.lung_h
    length, thick = rng.uniform(0.12, 0.2) * p.lung_h, rng.uniform(9.0, 16.0) * g
    rows, cols = s.full()
    _, vv = s.local_uv(side, rows, cols)
    along = np.clip(1.0 - ((vv - v) * p.lung_h / (length / 2.0)) ** 2, 0.0, 1.0)
    lens = _smoothstep((thick * np.sqrt(along) - s.outer_mm[side]) / (2.0 * g)) * (along > 0) * s.lung[side]
    s.add_occ(side, rows, cols, 0.9 * lens)
    s.no_vessels = np.maximum(s.no_vessels, lens)
    s.mark("fracture", rows, cols, lens > 0.5)


def _polyline(s: _Scene, pts: list[tuple[float, float]], width_mm: float, density: float,
              buffer: np.ndarray) -> None:
    """Splat a smooth polyline (mm) into ``buffer`` as a band of ``width_mm`` with path length ``density``."""
    pts_arr = np.asarray(pts, np.float64)
    seg = np.diff(pts_arr, axis=0)
    lengths = np.hypot(seg[:, 0], seg[:, 1])
    total = lengths.sum()
    n = max(2, int(total / (0.4 * s.sp)) + 1)
    t = np.linspace(0.0, total, n)
    cum = np.concatenate([[0.0], np.cumsum(lengths)])
    xs = np.interp(t, cum, pts_arr[:, 0])
    ys = np.interp(t, cum, pts_arr[:, 1])
    cols = np.rint((xs - s.xs[0]) / s.sp).astype(np.int64)
    rows = np.rint((ys - s.ys[0]) / s.sp).astype(np.int64)
    ok = (rows >= 0) & (rows < s.h) & (cols >= 0) & (cols < s.w)
    line = np.zeros((s.h, s.w), np.float32)
    line[rows[ok], cols[ok]] = 1.0
    sigma = max(0.6, width_mm / (2.0 * s.sp))
    buffer += density * np.clip(ndimage.gaussian_filter(line, sigma) * sigma * 2.5, 0.0, 1.0)


def _support_devices(s: _Scene, rng: np.random.Generator, laterality: str) -> None:
    p, g = s.p, s.g
    H = p.lung_h
    metal = np.zeros((s.h, s.w), np.float32)
    kinds = [k for k, prob in (("ett", 0.45), ("cvc", 0.5), ("pacer", 0.3), ("sternotomy", 0.3), ("ngt", 0.3))
             if rng.random() < prob]
    if not kinds:
        kinds = [("ett", "cvc", "pacer", "sternotomy", "ngt")[int(rng.integers(5))]]
    top = s.ys[0] - 10.0
    lat = s.lateral
    if lat:
        front = s.box_x0
        trach_x = s.box_x0 + 0.5 * s.box_w
    for kind in kinds:
        if kind == "ett":
            tip = 0.33 * H - rng.uniform(30, 60) * g
            x = (trach_x + 0.06 * tip) if lat else -0.01 * p.lung_w
            _polyline(s, [(x - (40 if lat else 0), top), (x, tip)], 2.0, 350.0, metal)
        elif kind == "ngt":
            x = (trach_x + 25 * g) if lat else 0.01 * p.lung_w
            end = (s.box_x0 + 0.3 * s.box_w, 1.25 * H) if lat else (0.22 * p.lung_w, 1.2 * H)
            _polyline(s, [(x, top), (x, 0.6 * H), (x + 5, 1.02 * H), end], 2.0, 300.0, metal)
        elif kind == "cvc":
            sign = -1.0 if rng.random() < 0.65 else 1.0  # right internal jugular / subclavian most common
            if lat:
                pts = [(trach_x - 20, top), (trach_x - 30, 0.1 * H), (s.box_x0 + 0.4 * s.box_w, 0.42 * H)]
            else:
                pts = [(sign * 0.45 * p.lung_w, -0.06 * H), (sign * 0.15 * p.lung_w, 0.03 * H),
                       (-0.05 * p.lung_w, 0.15 * H), (-0.06 * p.lung_w, rng.uniform(0.38, 0.48) * H)]
            _polyline(s, pts, 2.0, 300.0, metal)
        elif kind == "pacer":
            if lat:
                bx, by = front - 8 * g, 0.1 * H
                lead_end = (s.box_x0 + 0.15 * s.box_w, 0.85 * H)
            else:
                sign = 1.0 if rng.random() < 0.8 else -1.0  # left pectoral generators predominate
                bx, by = sign * 0.36 * p.lung_w, 0.08 * H
                lead_end = (0.2 * p.lung_w, 0.85 * H)
            win = s.window(bx - 30 * g, bx + 30 * g, by - 25 * g, by + 25 * g)
            if win is not None:
                rows, cols = win
                x, y = s.xs[cols][None, :], s.ys[rows][:, None]
                half_w = 5.0 * g if lat else 22.0 * g  # seen edge-on on the lateral
                box = _smoothstep((half_w - np.abs(x - bx)) / 2.0) * _smoothstep((17.0 * g - np.abs(y - by)) / 3.0)
                metal[rows, cols] += 500.0 * box
            mid = (-0.05 * p.lung_w, 0.45 * H) if not lat else (s.box_x0 + 0.45 * s.box_w, 0.45 * H)
            _polyline(s, [(bx, by), (mid[0], 0.1 * H), mid, lead_end], 2.0, 320.0, metal)
        elif kind == "sternotomy":
            n = int(rng.integers(5, 8))
            for i in range(n):
                y = (0.08 + 0.55 * i / (n - 1)) * H
                if lat:
                    x0 = s.box_x0 - p.wall * 0.5
                    _polyline(s, [(x0 - 6 * g, y - 2), (x0 + 6 * g, y + 2)], 1.5, 400.0, metal)
                else:
                    pts = [(-6 * g, y - 3 * g), (6 * g, y + 3 * g), (6 * g, y - 3 * g), (-6 * g, y + 3 * g),
                           (-6 * g, y - 3 * g)]
                    _polyline(s, pts, 1.5, 400.0, metal)
    s.metal += metal
    s.masks["devices"] = metal > 60.0


# --------------------------------------------------------------------------------------------------------------------
# composition


def _render(spec: PhantomSpec, with_masks: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    if spec.height_px < 8 or spec.width_px < 8 or not spec.spacing_mm > 0:
        raise ValueError(f"phantom needs at least 8x8 px and a positive spacing; got {spec}")
    view = spec.view.upper().strip()
    lateral = view in _LATERAL_VIEWS
    if not lateral and view not in ("PA", "AP"):
        raise ValueError(f"phantom view must be PA, AP or LATERAL; got {spec.view!r}")
    unknown = set(spec.findings) - set(CHEXPERT_LABELS)
    if unknown:
        raise ValueError(f"unknown findings {sorted(unknown)}; expected CheXpert names")
    findings = {k: v for k, v in spec.findings.items() if k != "No Finding"}

    atlas = load_lung_atlas()
    seed = int(spec.seed)
    anatomy_rng = np.random.default_rng([seed & 0xFFFFFFFF, 1])
    patient = _make_patient(spec, anatomy_rng, atlas.aspect)
    if not lateral and view == "AP":
        patient.lung_h *= 0.93  # AP (supine/portable) films are taken at lower inspiration
    rngs = {name: _finding_rng(seed, name) for name in findings}

    mediastinum_scale = 1.0
    if "Cardiomegaly" in findings:
        patient.ctr = float(rngs["Cardiomegaly"].uniform(0.58, 0.7))  # > 0.55 (brief), moderate to severe
    if "Enlarged Cardiomediastinum" in findings:
        mediastinum_scale = float(rngs["Enlarged Cardiomediastinum"].uniform(1.6, 2.1))
    atelectasis_sides = ()
    if "Atelectasis" in findings:
        atelectasis_sides = _atelectasis_plan(patient, rngs["Atelectasis"], findings["Atelectasis"])
    fractures = []
    if "Fracture" in findings:
        fractures = _fracture_plan(rngs["Fracture"], findings["Fracture"], patient.growth, patient.lung_h)

    s = _Scene(spec, patient, lateral)
    _sample_lungs(s, atlas)
    if lateral:
        _body_lateral(s)
        _spine_lateral(s)
        displaced = _heart_and_mediastinum_lateral(s, mediastinum_scale)
    else:
        _body_frontal(s)
        _ribs_frontal(s, fractures)
        _spine_frontal(s)
        _clavicles_scapulae_frontal(s)
        _trachea_frontal(s)
        displaced = _heart_and_mediastinum_frontal(s, mediastinum_scale)
    vessels = _vessels(s, np.random.default_rng([seed & 0xFFFFFFFF, 3]))

    for name, laterality in findings.items():
        rng = rngs[name]
        if name == "Pleural Effusion":
            _effusion(s, rng, laterality)
        elif name == "Pneumothorax":
            _pneumothorax(s, rng, laterality)
        elif name in ("Consolidation", "Pneumonia", "Lung Opacity"):
            _airspace(s, rng, laterality, name)
        elif name == "Lung Lesion":
            _lesion(s, rng, laterality)
        elif name == "Edema":
            _edema(s, rng, laterality)
        elif name == "Atelectasis":
            _atelectasis(s, rng, atelectasis_sides)
        elif name == "Pleural Other":
            _pleural_other(s, rng, laterality)
        elif name == "Support Devices":
            _support_devices(s, rng, laterality)
    if fractures:
        _fracture_signs(s, fractures, rngs["Fracture"])

    # gastric bubble under the left hemidiaphragm
    g = patient.growth
    if lateral:
        gx, gy = s.box_x0 + 0.35 * s.box_w, patient.lung_h * 1.02 + 18 * g
    else:
        gx, gy = 0.26 * patient.lung_w, patient.lung_h * 0.98 + 20 * g - patient.side_raise[LEFT]
    win = s.window(gx - 32 * g, gx + 32 * g, gy - 23 * g, gy + 8 * g)
    if win is not None:
        rows, cols = win
        bubble = _chord(np.hypot((s.xs[cols][None, :] - gx) / 1.4, s.ys[rows][:, None] - gy) / (22.0 * g))
        s.tissue[rows, cols] -= 14.0 * g * bubble

    air = np.zeros((s.h, s.w), np.float32)
    lung_any = np.zeros((s.h, s.w), np.float32)
    for side in (RIGHT, LEFT):
        aerated = s.depth[side] * (1.0 - displaced)
        if s.occ[side] is not None:
            aerated = aerated * (1.0 - s.occ[side])
        if s.boost[side] is not None:
            aerated = aerated * (1.0 + s.boost[side])
        air += aerated
        lung_any = np.maximum(lung_any, s.lung[side])
    fade = np.clip(np.maximum(s.outer_mm[RIGHT], s.outer_mm[LEFT]) / (12.0 * g), 0.0, 1.0)
    occ_any = np.maximum(*(o if o is not None else np.zeros_like(air) for o in s.occ))
    marks = vessels * lung_any * (1.0 - s.no_vessels) * (1.0 - displaced) * (1.0 - occ_any) * (0.6 + 0.4 * fade)
    s.tissue += marks
    s.tissue -= air
    s.tissue = np.maximum(s.tissue, 0.0)

    attenuation = s.tissue + 2.2 * patient.bone * s.bone + s.metal
    image = 1.0 - np.exp(-attenuation / 170.0)
    # detector processing: unsharp masking as in CR/DR post-processing, then a mild film curve
    box = 2 * int(round(5.0 / s.sp)) + 1  # two passes of a ~10 mm box ~ a Gaussian of sigma ~4 mm, much cheaper
    blur = ndimage.uniform_filter(ndimage.uniform_filter(image, box), box) if box > 1 else image
    image = image + 0.55 * (image - blur)
    noise_rng = np.random.default_rng([seed & 0xFFFFFFFF, 2])
    noise = noise_rng.standard_normal((s.h, s.w), dtype=np.float32)
    image = image + (0.006 + 0.012 * np.clip(image, 0, 1)) * noise
    image = 0.03 + 0.95 * np.clip(image, 0.0, 1.0) ** 1.15
    image = np.clip(image, 0.0, 1.0).astype(np.float32)

    masks: dict[str, np.ndarray] = {}
    if with_masks:
        masks = {k: v.astype(bool) for k, v in s.masks.items()}
        # aerated lung fields as a reader sees them: not behind the heart or mediastinum
        visible = displaced < 0.5
        masks["lung_right"] = (s.lung[RIGHT] > 0.5) & visible
        masks["lung_left"] = (s.lung[LEFT] > 0.5) & visible
        masks["lungs"] = masks["lung_right"] | masks["lung_left"]
    return image, masks


# --------------------------------------------------------------------------------------------------------------------
# gallery


def phantom_gallery(path, size_px: int = 320, spacing_mm: float = 1.25) -> None:
    """Save a grid of example phantoms (views, each finding, sex, child) as a PNG for eyeballing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases: list[tuple[str, PhantomSpec]] = [
        ("PA normal M", PhantomSpec("PA", size_px, size_px, spacing_mm, "M", 45, {}, 1)),
        ("AP normal M", PhantomSpec("AP", size_px, size_px, spacing_mm, "M", 45, {}, 1)),
        ("Lateral normal M", PhantomSpec("LATERAL", size_px, size_px, spacing_mm, "M", 45, {}, 1)),
        ("PA normal F", PhantomSpec("PA", size_px, size_px, spacing_mm, "F", 35, {}, 2)),
        ("PA child 6y", PhantomSpec("PA", size_px, size_px, spacing_mm, "M", 6, {}, 3)),
        ("PA 85y F", PhantomSpec("PA", size_px, size_px, spacing_mm, "F", 85, {}, 4)),
        ("Lateral 80y M", PhantomSpec("LATERAL", size_px, size_px, spacing_mm, "M", 80, {}, 4)),
    ]
    for i, label in enumerate(CHEXPERT_LABELS[1:]):
        side = ("left", "right", "")[i % 3]
        cases.append((f"{label} {side}".strip(), PhantomSpec("PA", size_px, size_px, spacing_mm, "M", 60,
                                                             {label: side}, 1)))
    cases.append(("Lat Cardiomegaly+Effusion", PhantomSpec("LATERAL", size_px, size_px, spacing_mm, "M", 60,
                                                           {"Cardiomegaly": "", "Pleural Effusion": "bilateral"}, 1)))
    cases.append(("AP devices+edema", PhantomSpec("AP", size_px, int(size_px * 0.8), spacing_mm * 1.2, "F", 70,
                                                  {"Support Devices": "", "Edema": ""}, 5)))
    cols = 6
    rows = (len(cases) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 3, rows * 3.2))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, spec) in zip(axes.ravel(), cases, strict=False):
        ax.imshow(render_phantom(spec), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    import sys

    phantom_gallery(sys.argv[1] if len(sys.argv) > 1 else "/tmp/phantom_grid.png")
