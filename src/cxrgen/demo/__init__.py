"""Embedded demo corpus: phantoms written in each source's native on-disk layout from real shipped metadata."""
