"""cxrgen: reproducible chest X-ray synthesis pipeline (library part; never imports snakemake)."""

__version__ = "0.1.0"
