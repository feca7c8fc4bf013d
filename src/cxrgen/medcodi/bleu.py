"""Corpus BLEU-1..4 of generated vs reference report impressions (MedCoDi-M Table 4; Papineni et al. 2002).

Tokenisation: lowercase, words and numbers are tokens and every punctuation mark is a token of its own
(:func:`report_tokens`, shared with the text VAE's tokenizer). BLEU-n is the geometric mean of the clipped (modified)
1..n-gram precisions, counted over the whole corpus, with uniform weights 1/n, times the brevity penalty
exp(1 - r/c) when the hypotheses' total length c is not longer than the effective reference length r (per hypothesis
the reference length closest to its own, the shorter on a tie; sacrebleu and NLTK do the same). No smoothing: a corpus
without a single matching n-gram of some order n scores 0 for BLEU-n.
"""

from __future__ import annotations

import math
import re
from collections import Counter

_TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def report_tokens(text: str) -> list[str]:
    """Lowercased word/number tokens, every other non-space character (punctuation) a token of its own."""
    return _TOKEN.findall(str(text).lower())


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(hypotheses: list[str], references: list[str] | list[list[str]], max_order: int = 4) -> dict[str, float]:
    """``{"bleu1": …, …, "bleu<max_order>": …}`` for hypotheses and their references (one string or a list of
    reference strings per hypothesis), in [0, 1]."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference entries")
    if max_order < 1:
        raise ValueError(f"max_order = {max_order}; must be >= 1")
    matches, totals = [0] * max_order, [0] * max_order
    hyp_length = ref_length = 0
    for hypothesis, refs in zip(hypotheses, references, strict=True):
        hyp = report_tokens(hypothesis)
        ref_lists = [report_tokens(r) for r in ([refs] if isinstance(refs, str) else refs)]
        if not ref_lists:
            raise ValueError("a hypothesis has no reference")
        hyp_length += len(hyp)
        ref_length += min((abs(len(r) - len(hyp)), len(r)) for r in ref_lists)[1]
        for n in range(1, max_order + 1):
            counts = _ngrams(hyp, n)
            best_ref: Counter = Counter()
            for ref in ref_lists:
                best_ref |= _ngrams(ref, n)  # per n-gram, its largest count in any reference (clipping)
            matches[n - 1] += sum(min(c, best_ref[g]) for g, c in counts.items())
            totals[n - 1] += max(0, len(hyp) - n + 1)
    if hyp_length == 0:
        return {f"bleu{n}": 0.0 for n in range(1, max_order + 1)}
    penalty = 1.0 if hyp_length > ref_length else math.exp(1.0 - ref_length / hyp_length)
    scores = {}
    for n in range(1, max_order + 1):
        if min(matches[:n]) == 0:
            scores[f"bleu{n}"] = 0.0
            continue
        log_precision = sum(math.log(matches[k] / totals[k]) for k in range(n)) / n
        scores[f"bleu{n}"] = penalty * math.exp(log_precision)
    return scores
