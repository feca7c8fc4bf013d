"""Shared training machinery: one explicit loop, atomic checkpoints with exact resume, EMA, MLflow tracking."""
