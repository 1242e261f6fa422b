"""``lowres report``: one self-contained HTML page per sweep (a merged sharded sweep is one) or
study folder, written to ``RUN/report.html`` by default and at the end of ``lowres sweep``,
``lowres merge`` and ``lowres run``.

The page requests nothing: figures are the sweep's PNGs as ``data:`` URIs, style and script are
inline, and a Content-Security-Policy forbids anything else; it reads offline, prints to PDF
and works with find-in-page (every number is text). It holds a header (data, protocol, the
degradation chain and its hash, each model with its training recipe or input adapter, seeds,
folds, software, wall times), the summary a reader needs first (TAR at the critical FAR per
width, per model the area under TAR vs log width and the critical width, where it falls below
raw pixels, the Ring-loss margins and whether their intervals exclude zero), every figure with
how to read it, the tables in the paper's layout (rows and cells anchored by model and width)
and, with a baseline, ``lowres check``'s comparison with regressed cells highlighted. Every
number comes from ``results.csv`` (cells carry the stored value in ``data-value``).

Modules: :mod:`~lowres.report.folder` (what a folder holds and lacks),
:mod:`~lowres.report.summary` (the derived numbers), :mod:`~lowres.report.captions` (how to
read each figure), :mod:`~lowres.report.html` (building blocks, the page shell),
:mod:`~lowres.report.sections` (a sweep's sections) and :mod:`~lowres.report.build` (pages,
writing).
"""

from lowres.report.build import (
    REPORT_FILE,
    Written,
    compare,
    render_report,
    report_after_run,
    write_report,
)
from lowres.report.captions import FIGURE_CAPTIONS, STUDY_FIGURES
from lowres.report.folder import StudyFolder, SweepFolder, read_folder

__all__ = [
    "FIGURE_CAPTIONS",
    "REPORT_FILE",
    "STUDY_FIGURES",
    "StudyFolder",
    "SweepFolder",
    "Written",
    "compare",
    "read_folder",
    "render_report",
    "report_after_run",
    "write_report",
]
