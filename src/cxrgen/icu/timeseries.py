"""Hourly EHR time series of an ICU stay, after the mimic3-benchmarks discretiser (Harutyunyan et al. 2019) that
MedFuse and DDL-CXR reuse: 17 clinical channels, hourly bins from ICU admission, the last value of a bin, previous
value imputation, categorical channels one-hot, one observed-mask column per channel.

Column count: 12 continuous values + 47 one-hot columns + 17 masks = 76, the benchmark's width. The 47 one-hot
columns are the benchmark's category lists verbatim (``discretizer_config.json``: capillary refill 2, GCS eye 8,
motor 12, verbal 12, total 13), which hold both the CareVue ("4 Spontaneously") and the MetaVision ("Spontaneously")
spellings of each GCS answer. MIMIC-IV is MetaVision-only, so its values fill only the MetaVision columns (eye 4,
motor 6, verbal 6) and the CareVue ones stay 0: they are kept so the width and column order equal the benchmark's.

MIMIC-IV itemids (``icu/d_items``, ``hosp/d_labitems``), the MetaVision rows of the benchmark's
``itemid_to_variable_map.csv``; glucose and pH also come from the blood-gas/chemistry lab tests
(``labevents`` 50809, 50931, 50820), which the ICU charts only partly duplicate. MIMIC-IV has no GCS total item
(the benchmark's was CareVue 198): with ``derive_gcs_total`` the total is eye + motor + verbal charted at the same
time (this project's choice; without it the channel is never observed, as in the lineage's MIMIC-IV extracts).

Unit handling follows the benchmark's cleaning: Fahrenheit to Celsius (item 223761, or any temperature > 79),
inches to cm (226707), pounds to kg (226531), FiO2 > 1 read as percent, SpO2 <= 1 read as a fraction. Values outside
broad plausibility bounds (the outlier bounds of the benchmark's ``variable_ranges.csv``) are dropped and counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Channel:
    name: str  # the benchmark's channel name (column header)
    chart_itemids: tuple[int, ...]
    lab_itemids: tuple[int, ...] = ()
    categories: tuple[str, ...] | None = None  # one-hot values (None = continuous)
    bounds: tuple[float, float] | None = None  # plausible range of a continuous value (outside: dropped)
    normal: str | float | None = None  # the benchmark's normal value (categorical fallback before any data)

    @property
    def categorical(self) -> bool:
        return self.categories is not None


_EYE = ("To Pain", "3 To speech", "1 No Response", "4 Spontaneously", "None", "To Speech", "Spontaneously",
        "2 To pain")
_MOTOR = ("1 No Response", "3 Abnorm flexion", "Abnormal extension", "No response", "4 Flex-withdraws",
          "Localizes Pain", "Flex-withdraws", "Obeys Commands", "Abnormal Flexion", "6 Obeys Commands",
          "5 Localizes Pain", "2 Abnorm extensn")
_TOTAL = ("11", "10", "13", "12", "15", "14", "3", "5", "4", "7", "6", "9", "8")
_VERBAL = ("1 No Response", "No Response", "Confused", "Inappropriate Words", "Oriented", "No Response-ETT",
           "5 Oriented", "Incomprehensible sounds", "1.0 ET/Trach", "4 Confused", "2 Incomp sounds",
           "3 Inapprop words")

# Benchmark channel order (alphabetical, as its discretiser's header).
CHANNELS: tuple[Channel, ...] = (
    Channel("Capillary refill rate", (223951, 224308), categories=("0.0", "1.0"), normal="0.0"),
    Channel("Diastolic blood pressure", (220051, 220180, 225310, 224643, 227242), bounds=(0, 375)),
    Channel("Fraction inspired oxygen", (223835,), bounds=(0.2, 1.1)),
    Channel("Glascow coma scale eye opening", (220739,), categories=_EYE, normal="Spontaneously"),
    Channel("Glascow coma scale motor response", (223901,), categories=_MOTOR, normal="Obeys Commands"),
    Channel("Glascow coma scale total", (), categories=_TOTAL, normal="15"),
    Channel("Glascow coma scale verbal response", (223900,), categories=_VERBAL, normal="Oriented"),
    Channel("Glucose", (220621, 225664, 226537), (50931, 50809), bounds=(0, 2200)),
    Channel("Heart Rate", (220045,), bounds=(0, 390)),
    Channel("Height", (226730, 226707), bounds=(0, 275)),
    Channel("Mean blood pressure", (220052, 220181, 225312), bounds=(0, 375)),
    Channel("Oxygen saturation", (220277,), bounds=(0, 100)),
    Channel("Respiratory rate", (220210, 224690), bounds=(0, 330)),
    Channel("Systolic blood pressure", (220050, 220179, 225309, 224167, 227243), bounds=(0, 375)),
    Channel("Temperature", (223762, 223761), bounds=(14.2, 47)),
    Channel("Weight", (226512, 224639, 226531), bounds=(0, 250)),
    Channel("pH", (223830, 220274), (50820,), bounds=(6.3, 10)),
)
N_CHANNELS = len(CHANNELS)
CHANNEL_INDEX = {c.name: i for i, c in enumerate(CHANNELS)}
CONTINUOUS = tuple(i for i, c in enumerate(CHANNELS) if not c.categorical)
GCS_TOTAL = CHANNEL_INDEX["Glascow coma scale total"]
GCS_PARTS = tuple(CHANNEL_INDEX[f"Glascow coma scale {p}"] for p in ("eye opening", "motor response",
                                                                     "verbal response"))
_FAHRENHEIT, _INCHES, _POUNDS = 223761, 226707, 226531


def _columns() -> tuple[str, ...]:
    values = []
    for channel in CHANNELS:
        values.extend([f"{channel.name}->{v}" for v in channel.categories] if channel.categorical else [channel.name])
    return (*values, *(f"mask->{c.name}" for c in CHANNELS))


COLUMNS: tuple[str, ...] = _columns()  # 76 = 12 + 47 + 17
N_COLUMNS = len(COLUMNS)


def itemids(table: str) -> set[int]:
    """The itemids read from ``chartevents`` or ``labevents``."""
    return {i for c in CHANNELS for i in (c.chart_itemids if table == "chartevents" else c.lab_itemids)}


def _item_channel(table: str) -> dict[int, int]:
    return {i: k for k, c in enumerate(CHANNELS) for i in (c.chart_itemids if table == "chartevents" else c.lab_itemids)}


# GCS answers by score (MetaVision wording), for values charted only as a number; and the score of each category.
_GCS_BY_SCORE = {
    "Glascow coma scale eye opening": {4: "Spontaneously", 3: "To Speech", 2: "To Pain", 1: "None"},
    "Glascow coma scale motor response": {6: "Obeys Commands", 5: "Localizes Pain", 4: "Flex-withdraws",
                                          3: "Abnormal Flexion", 2: "Abnormal extension", 1: "No response"},
    "Glascow coma scale verbal response": {5: "Oriented", 4: "Confused", 3: "Inappropriate Words",
                                           2: "Incomprehensible sounds", 1: "No Response"},
}


def category_score(channel: Channel, category: str) -> int:
    """The GCS points of a category ("4 Spontaneously" and "Spontaneously" -> 4; the intubated verbal answers -> 1)."""
    if category in ("No Response-ETT", "1.0 ET/Trach"):
        return 1
    head = category.split(" ", 1)[0]
    if head.replace(".", "", 1).isdigit():
        return int(float(head))
    return {v: k for k, v in _GCS_BY_SCORE[channel.name].items()}[category]


def _categorise(channel: Channel, text: pd.Series, number: pd.Series) -> pd.Series:
    """Category index of each value (NaN when unmapped): the text matched case-insensitively to the benchmark's
    categories, else (GCS) the charted score, (capillary refill) normal/brisk vs abnormal/delayed wording."""
    lookup = {v.lower(): i for i, v in enumerate(channel.categories)}
    clean = text.fillna("").str.strip().str.lower()
    index = clean.map(lookup).astype("float64").to_numpy()
    index = pd.Series(index, index=text.index)
    if channel.name == "Capillary refill rate":
        abnormal = clean.str.contains("abnormal|delayed|>", regex=True)
        normal = clean.str.contains("normal|brisk|<", regex=True) & ~abnormal
        index = index.fillna(pd.Series(np.where(abnormal, 1.0, np.where(normal, 0.0, np.nan)), index=text.index))
        index = index.fillna(number.where(number.isin((0.0, 1.0))))
    elif channel.name in _GCS_BY_SCORE:
        by_score = {s: lookup[v.lower()] for s, v in _GCS_BY_SCORE[channel.name].items()}
        index = index.fillna(number.round().map(by_score))
    return index


def _convert(values: pd.Series, itemid: pd.Series, channel: Channel) -> pd.Series:
    if channel.name == "Temperature":
        fahrenheit = (itemid == _FAHRENHEIT) | (values > 79)
        return values.where(~fahrenheit, (values - 32) * 5 / 9)
    if channel.name == "Height":
        return values.where(itemid != _INCHES, values * 2.54)
    if channel.name == "Weight":
        return values.where(itemid != _POUNDS, values * 0.453592)
    if channel.name == "Fraction inspired oxygen":
        return values.where(values <= 1, values / 100)
    if channel.name == "Oxygen saturation":
        return values.where(values > 1, values * 100)
    return values


def clean_events(events: pd.DataFrame, table: str) -> tuple[pd.DataFrame, Counter]:
    """Events (``itemid``, ``value``, ``valuenum``, plus whatever key/time columns) -> the same rows with ``channel``
    (index into :data:`CHANNELS`) and numeric ``x`` (continuous value in the benchmark's unit, or category index);
    rows that cannot be used are dropped and counted by reason."""
    drops: Counter = Counter()
    item_channel = _item_channel(table)
    events = events[events["itemid"].isin(list(item_channel))].copy()
    events["channel"] = events["itemid"].map(item_channel).astype("int64")
    number = pd.to_numeric(events["valuenum"], errors="coerce").astype("float64")
    from_text = pd.to_numeric(events["value"].astype("string").str.strip(), errors="coerce").astype("float64")
    number = number.fillna(from_text)
    x = pd.Series(np.nan, index=events.index, dtype="float64")
    for k, channel in enumerate(CHANNELS):
        rows = events["channel"] == k
        if not rows.any():
            continue
        if channel.categorical:
            got = _categorise(channel, events.loc[rows, "value"].astype("string"), number[rows])
            drops[f"{table}:unmapped_category"] += int(got.isna().sum())
        else:
            got = _convert(number[rows], events.loc[rows, "itemid"], channel)
            drops[f"{table}:not_a_number"] += int(got.isna().sum())
            low, high = channel.bounds
            implausible = got.notna() & ((got < low) | (got > high))
            drops[f"{table}:implausible_value"] += int(implausible.sum())
            got = got.mask(implausible)
        x[rows] = got.astype("float64")
    events["x"] = x
    return events[events["x"].notna()], drops


def add_gcs_total(events: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Append a GCS total event (category index of the sum) wherever eye, motor and verbal are charted at the same
    ``charttime`` for the same ``keys``."""
    parts = events[events["channel"].isin(GCS_PARTS)]
    if parts.empty:
        return events
    scores = parts["x"].astype(int).to_numpy()
    points = np.array([category_score(CHANNELS[c], CHANNELS[c].categories[s])
                       for c, s in zip(parts["channel"], scores, strict=True)])
    parts = parts.assign(points=points)
    grouped = parts.groupby([*keys, "charttime"]).agg(points=("points", "sum"), n=("channel", "nunique"))
    complete = grouped[grouped["n"] == len(GCS_PARTS)].reset_index()
    total_lookup = {v: i for i, v in enumerate(CHANNELS[GCS_TOTAL].categories)}
    complete["x"] = complete["points"].astype(int).astype(str).map(total_lookup).astype("float64")
    complete["channel"] = GCS_TOTAL
    return pd.concat([events, complete[[*keys, "charttime", "channel", "x"]]], ignore_index=True)


def discretise(rows: np.ndarray, hours: np.ndarray, channels: np.ndarray, x: np.ndarray, n_rows: int,
               n_hours: int) -> np.ndarray:
    """[n_rows, n_hours, 17] float raw series: the value of the last event (input order = time order) of each bin
    ``floor(hours)`` in [0, n_hours); NaN where nothing was charted."""
    raw = np.full((n_rows, n_hours, N_CHANNELS), np.nan, dtype=np.float64)
    bins = np.floor(hours).astype(np.int64)
    keep = (bins >= 0) & (bins < n_hours)
    cells = pd.DataFrame({"row": rows[keep], "bin": bins[keep], "channel": channels[keep], "x": x[keep]})
    cells = cells.drop_duplicates(["row", "bin", "channel"], keep="last")
    raw[cells["row"].to_numpy(), cells["bin"].to_numpy(), cells["channel"].to_numpy()] = cells["x"].to_numpy()
    return raw


def fit_normalisation(raw: np.ndarray, train: np.ndarray) -> dict:
    """Mean/std of each continuous channel over the observed bins of the ``train`` rows, and the most frequent
    category of each categorical channel there (the benchmark's normal value when never observed)."""
    train_raw = raw[train]
    means, stds, modes = {}, {}, {}
    for k, channel in enumerate(CHANNELS):
        seen = train_raw[..., k][~np.isnan(train_raw[..., k])]
        if channel.categorical:
            if seen.size:
                modes[channel.name] = channel.categories[int(np.bincount(seen.astype(np.int64)).argmax())]
            else:
                modes[channel.name] = str(channel.normal)
        else:
            means[channel.name] = float(seen.mean()) if seen.size else 0.0
            std = float(seen.std()) if seen.size > 1 else 0.0
            stds[channel.name] = std if std > 1e-8 else 1.0
    return {"means": means, "stds": stds, "modes": modes, "train_rows": int(np.count_nonzero(train)),
            "observed_train_bins": {c.name: int(np.count_nonzero(~np.isnan(train_raw[..., k])))
                                    for k, c in enumerate(CHANNELS)}}


def forward_fill(raw: np.ndarray) -> np.ndarray:
    """Previous-value imputation along the hour axis (NaN before a channel's first value)."""
    observed = ~np.isnan(raw)
    t = np.arange(raw.shape[1])[None, :, None]
    last = np.maximum.accumulate(np.where(observed, t, -1), axis=1)
    filled = np.take_along_axis(raw, np.maximum(last, 0), axis=1)
    return np.where(last >= 0, filled, np.nan)


def encode(raw: np.ndarray, normalisation: dict) -> tuple[np.ndarray, np.ndarray]:
    """(values [N, T, 76] float32, observed [N, T, 17] bool): imputed, continuous channels standardised with the
    train statistics (so the train mean before a channel's first value is 0), categoricals one-hot, then masks."""
    observed = ~np.isnan(raw)
    filled = forward_fill(raw)
    out = np.zeros((*raw.shape[:2], N_COLUMNS), dtype=np.float32)
    col = 0
    for k, channel in enumerate(CHANNELS):
        series = filled[..., k]
        if channel.categorical:
            start = channel.categories.index(normalisation["modes"][channel.name])
            codes = np.where(np.isnan(series), start, series).astype(np.int64)
            out[..., col:col + len(channel.categories)] = np.eye(len(channel.categories), dtype=np.float32)[codes]
            col += len(channel.categories)
        else:
            mean, std = normalisation["means"][channel.name], normalisation["stds"][channel.name]
            out[..., col] = np.where(np.isnan(series), 0.0, (series - mean) / std)
            col += 1
    out[..., col:] = observed
    return out, observed
