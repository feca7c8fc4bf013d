"""Human-readable reports of pipeline stages (HTML for ``snakemake --report``, markdown twins for terminals)."""

from cxrgen.report.data_report import write_data_report

__all__ = ["write_data_report"]
