"""Evaluation: the in-domain DenseNet classifier (feature extractor and judge) and the downstream experiments."""
