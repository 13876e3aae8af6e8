"""The benchmark report: figures from the raw phase results, the Markdown rendered from
them, and the py-spy profile tables it shows."""

from busbench.report.figures import phase_figures, summarise
from busbench.report.pyspy import profile_table, project_table
from busbench.report.render import markdown, targets

__all__ = [
    "markdown",
    "phase_figures",
    "profile_table",
    "project_table",
    "summarise",
    "targets",
]
