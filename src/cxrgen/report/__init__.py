"""Human-readable reports of pipeline stages (HTML for ``snakemake --report``, markdown twins for terminals)."""
