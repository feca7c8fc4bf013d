"""Datasets and data products shared by several stages (latent cache, LNFS selection)."""
