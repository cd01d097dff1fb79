"""Self-contained HTML pages: the run page of one experiment and the matrix page of a bench database.

``page`` holds the one stylesheet, escape function and page shell; ``figures`` every plot as PNG bytes;
``run_page`` and ``matrix_page`` the two pages.
"""

from poisonlab.report.figures import (
    figure_to_png,
    fine_pruning_png,
    purification_png,
    strip_histogram_png,
    trigger_png,
)
from poisonlab.report.run_page import DetectorView, render_report, write_report

__all__ = [
    "DetectorView",
    "figure_to_png",
    "fine_pruning_png",
    "purification_png",
    "render_report",
    "strip_histogram_png",
    "trigger_png",
    "write_report",
]
