"""Report text processing: the rule-based CheXpert-style report labeler (:mod:`cxrgen.text.labeler`) and its
evaluation (:mod:`cxrgen.text.evaluate`)."""
