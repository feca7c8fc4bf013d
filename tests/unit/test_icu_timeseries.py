"""The hourly EHR discretiser: event cleaning (units, categories, implausible values), last value per bin,
previous-value imputation, train-only normalisation, one-hot categoricals and masks (76 columns)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrgen.icu import timeseries as ts

HR, TEMP, FIO2, CRR = (ts.CHANNEL_INDEX[n] for n in ("Heart Rate", "Temperature", "Fraction inspired oxygen",
                                                     "Capillary refill rate"))
EYE = ts.CHANNEL_INDEX["Glascow coma scale eye opening"]


def column(name: str) -> int:
    return ts.COLUMNS.index(name)


def test_layout_is_the_benchmarks_76_columns():
    assert ts.N_CHANNELS == 17 and len(ts.CONTINUOUS) == 12
    assert sum(len(c.categories) for c in ts.CHANNELS if c.categorical) == 47
    assert ts.N_COLUMNS == 76 and ts.COLUMNS[-17:] == tuple(f"mask->{c.name}" for c in ts.CHANNELS)
    assert len(set(ts.COLUMNS)) == 76


def _events(rows):
    return pd.DataFrame(rows, columns=["stay_id", "charttime", "itemid", "value", "valuenum"])


def test_cleaning_converts_units_maps_categories_and_counts_drops():
    t = pd.Timestamp("2150-01-01")
    events, drops = ts.clean_events(_events([
        (1, t, 223761, "98.6", 98.6),  # Fahrenheit
        (1, t, 223762, "37.2", 37.2),
        (1, t, 223835, "40", 40.0),  # FiO2 percent
        (1, t, 226707, "70", 70.0),  # inches
        (1, t, 226531, "200", 200.0),  # pounds
        (1, t, 220277, "0.97", 0.97),  # SpO2 fraction
        (1, t, 220739, "To Speech", 3.0),
        (1, t, 220739, None, 4.0),  # eye charted as a score only
        (1, t, 223900, "No Response-ETT", 1.0),
        (1, t, 224308, "Abnormal >3 Seconds", None),
        (1, t, 223951, "Normal <3 Seconds", None),
        (1, t, 220045, "400", 400.0),  # implausible heart rate
        (1, t, 220045, "n/a", None),  # not a number
        (1, t, 220739, "Blinks", None),  # unknown answer
    ]), "chartevents")
    x = dict(zip(events["itemid"].astype(str) + ":" + events["value"].fillna("").astype(str), events["x"],
                 strict=True))
    assert x["223761:98.6"] == pytest.approx(37.0) and x["223762:37.2"] == pytest.approx(37.2)
    assert x["223835:40"] == pytest.approx(0.40) and x["226707:70"] == pytest.approx(177.8)
    assert x["226531:200"] == pytest.approx(90.7184) and x["220277:0.97"] == pytest.approx(97.0)
    eye = ts.CHANNELS[EYE].categories
    assert eye[int(x["220739:To Speech"])] == "To Speech" and eye[int(x["220739:"])] == "Spontaneously"
    assert ts.CHANNELS[ts.CHANNEL_INDEX["Glascow coma scale verbal response"]].categories[
        int(x["223900:No Response-ETT"])] == "No Response-ETT"
    assert (x["224308:Abnormal >3 Seconds"], x["223951:Normal <3 Seconds"]) == (1.0, 0.0)
    assert drops == {"chartevents:implausible_value": 1, "chartevents:not_a_number": 1,
                     "chartevents:unmapped_category": 1}


def test_lab_itemids_feed_glucose_and_ph():
    assert ts.itemids("labevents") == {50931, 50809, 50820}
    t = pd.Timestamp("2150-01-01")
    labs = pd.DataFrame({"subject_id": [1, 1], "charttime": [t, t], "itemid": [50931, 50820],
                         "value": ["140", "7.31"], "valuenum": [140.0, 7.31]})
    events, _ = ts.clean_events(labs, "labevents")
    assert [ts.CHANNELS[c].name for c in events["channel"]] == ["Glucose", "pH"]


def test_gcs_total_is_the_sum_of_parts_charted_together():
    t0, t1 = pd.Timestamp("2150-01-01 10:00"), pd.Timestamp("2150-01-01 11:00")
    parts = {ts.GCS_PARTS[0]: 3, ts.GCS_PARTS[1]: 7, ts.GCS_PARTS[2]: 3}  # category indexes
    rows = [{"row": 0, "charttime": t0, "channel": c, "x": float(i)} for c, i in parts.items()]
    rows.append({"row": 0, "charttime": t1, "channel": ts.GCS_PARTS[0], "x": 3.0})  # eye alone: no total
    out = ts.add_gcs_total(pd.DataFrame(rows), ["row"])
    total = out[out["channel"] == ts.GCS_TOTAL]
    assert len(total) == 1 and total["charttime"].iloc[0] == t0
    # "4 Spontaneously" (4) + "Obeys Commands" (6) + "Inappropriate Words" (3) = 13
    assert ts.CHANNELS[ts.GCS_TOTAL].categories[int(total["x"].iloc[0])] == "13"


def test_last_value_of_a_bin_wins_and_out_of_range_hours_are_ignored():
    raw = ts.discretise(np.array([0, 0, 0, 0]), np.array([0.2, 0.9, 1.5, 3.0]), np.array([HR, HR, HR, HR]),
                        np.array([70.0, 80.0, 90.0, 99.0]), n_rows=1, n_hours=3)
    np.testing.assert_array_equal(raw[0, :, HR], [80.0, 90.0, np.nan])


def test_imputation_masks_one_hot_and_train_only_normalisation():
    raw = np.full((3, 4, ts.N_CHANNELS), np.nan)
    raw[0, 1, HR], raw[0, 3, HR] = 80.0, 100.0  # train stay
    raw[1, 0, HR] = 60.0  # train stay
    raw[2, 2, HR] = 1000.0  # test stay: must not move the statistics
    raw[0, 2, EYE] = ts.CHANNELS[EYE].categories.index("To Pain")
    raw[1, 0, EYE] = raw[1, 1, EYE] = ts.CHANNELS[EYE].categories.index("To Speech")
    train = np.array([True, True, False])
    norm = ts.fit_normalisation(raw, train)
    assert norm["means"]["Heart Rate"] == pytest.approx(80.0)
    assert norm["stds"]["Heart Rate"] == pytest.approx(np.std([80.0, 100.0, 60.0]))
    assert norm["stds"]["Weight"] == 1.0 and norm["means"]["Weight"] == 0.0  # never observed
    assert norm["modes"]["Glascow coma scale eye opening"] == "To Speech"
    assert norm["modes"]["Capillary refill rate"] == "0.0"  # never observed: the benchmark's normal value
    raw_test_changed = raw.copy()
    raw_test_changed[2, 2, HR] = -5.0
    assert ts.fit_normalisation(raw_test_changed, train) == norm

    values, observed = ts.encode(raw, norm)
    assert values.shape == (3, 4, 76) and values.dtype == np.float32
    hr = values[0, :, column("Heart Rate")] * norm["stds"]["Heart Rate"] + norm["means"]["Heart Rate"]
    np.testing.assert_allclose(hr, [80.0, 80.0, 80.0, 100.0], rtol=1e-5)  # train mean, value, carried, value
    np.testing.assert_array_equal(values[0, :, column("mask->Heart Rate")], [0, 1, 0, 1])
    np.testing.assert_array_equal(observed[0, :, HR], [False, True, False, True])
    eye_cols = [column(f"Glascow coma scale eye opening->{v}") for v in ts.CHANNELS[EYE].categories]
    eye = values[0][:, eye_cols]
    assert (eye.sum(axis=1) == 1).all()
    speech, pain = (ts.CHANNELS[EYE].categories.index(v) for v in ("To Speech", "To Pain"))
    assert eye[:, speech].tolist() == [1, 1, 0, 0] and eye[:, pain].tolist() == [0, 0, 1, 1]
    crr = values[:, :, [column("Capillary refill rate->0.0"), column("Capillary refill rate->1.0")]]
    assert (crr[..., 0] == 1).all() and (crr[..., 1] == 0).all()
    assert (values[2, :, column("Weight")] == 0).all() and (values[2, :, column("mask->Weight")] == 0).all()
