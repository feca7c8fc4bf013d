"""Corpus BLEU-1..4 (MedCoDi-M Table 4) against torchmetrics' BLEUScore on hand-made pairs: same tokens (ours,
joined by spaces: torchmetrics splits on whitespace), same scores within 1e-6."""

import math

import pytest
from torchmetrics.text import BLEUScore

from cxrgen.medcodi.bleu import corpus_bleu, report_tokens

PAIRS = [  # (hypothesis, references): partial overlaps, reordering, a longer and a shorter hypothesis
    ("No acute cardiopulmonary process identified.", ["No acute cardiopulmonary process. Lungs are clear."]),
    ("Small left pleural effusion, unchanged.", ["Small left pleural effusion.", "Stable small left effusion."]),
    ("Mild cardiomegaly without pulmonary edema or effusion.", ["Mild cardiomegaly. No pulmonary edema."]),
    ("Right lower lobe pneumonia.", ["Right lower lobe opacity concerning for pneumonia."]),
    ("Interval placement of a right internal jugular line; tip in the SVC.",
     ["Right internal jugular line with tip in the lower SVC."]),
]


def _torchmetrics(pairs, n):
    metric = BLEUScore(n_gram=n)
    hyps = [" ".join(report_tokens(h)) for h, _ in pairs]
    refs = [[" ".join(report_tokens(r)) for r in rs] for _, rs in pairs]
    return float(metric(hyps, refs))


def test_tokens_are_lowercase_words_and_punctuation():
    assert report_tokens("No acute process; tip in SVC (2.5 cm).") == \
        ["no", "acute", "process", ";", "tip", "in", "svc", "(", "2", ".", "5", "cm", ")", "."]


@pytest.mark.parametrize("subset", [slice(None), slice(0, 1), slice(1, 3), slice(3, None)])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_corpus_bleu_equals_torchmetrics(subset, n):
    pairs = PAIRS[subset]
    ours = corpus_bleu([h for h, _ in pairs], [r for _, r in pairs])[f"bleu{n}"]
    reference = _torchmetrics(pairs, n)
    assert ours == pytest.approx(reference, abs=1e-6)
    assert 0.0 < ours < 1.0  # partial matches: the check is not trivially 0 or 1


def test_brevity_penalty_and_perfect_and_disjoint_corpora():
    refs = ["small left pleural effusion with adjacent atelectasis ."]
    short = corpus_bleu(["small left pleural effusion ."], refs)
    # every n-gram of the short hypothesis but those across "effusion ." matches; penalty exp(1 - r/c) = exp(1 - 8/5)
    precisions = [5 / 5, 3 / 4, 2 / 3, 1 / 2]
    expected = math.exp(1 - 8 / 5) * math.exp(sum(math.log(p) for p in precisions) / 4)
    assert short["bleu4"] == pytest.approx(expected, abs=1e-12)
    assert short["bleu4"] == pytest.approx(_torchmetrics([("small left pleural effusion .", refs)], 4), abs=1e-6)
    assert corpus_bleu(refs, refs) == {f"bleu{n}": pytest.approx(1.0) for n in range(1, 5)}
    assert corpus_bleu(["cardiomegaly"], refs)["bleu1"] == 0.0


def test_one_string_reference_equals_a_list_of_one_and_lengths_must_match():
    assert corpus_bleu(["a b c d e"], ["a b c d f"]) == corpus_bleu(["a b c d e"], [["a b c d f"]])
    with pytest.raises(ValueError, match="hypotheses"):
        corpus_bleu(["a"], [])
