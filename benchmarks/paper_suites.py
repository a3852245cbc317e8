"""The three paper suites of ``benchmarks/run.py``: which shipped configs they run, what
``--quick`` / ``--smoke`` change, and how each paper's qualitative claims are checked.

Every run is a file of ``configs/experiment/`` (``<task>_<dataset>_<method>-<paper>.yaml``) plus
optional per-run overrides (SAT's ε in the AMAT suite). The full settings are the configs as
shipped; ``--quick`` applies the small per-group overrides below (smaller networks, fewer
epochs, smaller images for the slow dense tasks) so each suite finishes in about 20 minutes on
2 CPU cores, still on the real data and with the same test-time attack suite. The claim checks
use rules fixed here, before any measurement, each restated as tests on confidence intervals
(:mod:`benchmarks.paper_evidence`): "confirmed" / "refuted" / "inconclusive", with the numbers,
the intervals, n and the smallest effect n could detect either way.

What a suite is: :mod:`benchmarks.paper_spec`; the suites: :mod:`benchmarks.paper_xue`,
:mod:`benchmarks.paper_joel`, :mod:`benchmarks.paper_amat`; the helpers their claim rules share:
:mod:`benchmarks.paper_claims`. This module is their registry.
"""

from __future__ import annotations

from benchmarks.paper_amat import AMAT
from benchmarks.paper_joel import JOEL
from benchmarks.paper_spec import Suite
from benchmarks.paper_xue import XUE

SUITES: dict[str, Suite] = {s.name: s for s in (XUE, AMAT, JOEL)}
