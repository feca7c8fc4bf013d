import numpy as np
import pytest

from cxrgen.labels import CHEXPERT_LABELS, LABEL_COLUMNS, apply_label_policy, label_column

RAW = np.array([[1.0, 0.0, -1.0, np.nan]])


def test_fourteen_labels_and_column_names():
    assert len(CHEXPERT_LABELS) == 14 and len(set(LABEL_COLUMNS)) == 14
    assert label_column("Pleural Effusion") == "lbl_pleural_effusion"


@pytest.mark.parametrize(
    ("uncertain", "blank", "expected"),
    [
        ("ones", "zeros", [1, 0, 1, 0]),
        ("zeros", "zeros", [1, 0, 0, 0]),
        ("ignore", "ignore", [1, 0, np.nan, np.nan]),
        ("ones", "ignore", [1, 0, 1, np.nan]),
    ],
)
def test_policies(uncertain, blank, expected):
    np.testing.assert_array_equal(apply_label_policy(RAW, uncertain, blank)[0], np.array(expected, dtype=np.float32))


def test_input_is_not_modified_and_bad_values_rejected():
    raw = RAW.copy()
    apply_label_policy(raw, "ones", "zeros")
    np.testing.assert_array_equal(raw, RAW)
    with pytest.raises(ValueError, match="raw labels"):
        apply_label_policy(np.array([[2.0]]), "ones", "zeros")  # DDL-CXR's 0-3 recoding would be caught here
    with pytest.raises(ValueError, match="allowed: ones, zeros, ignore"):
        apply_label_policy(RAW, "U-ones", "zeros")
