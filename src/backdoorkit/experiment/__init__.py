"""The experiment matrix: declarative specs, cached artefacts, a resumable results database, reports.

* :mod:`~backdoorkit.experiment.spec`: the YAML spec, validated and expanded into cells;
* :mod:`~backdoorkit.experiment.runner`: runs the cells (local processes or Ray), resumable;
* :mod:`~backdoorkit.experiment.stages`: what one cell computes, every artefact cached;
* :mod:`~backdoorkit.experiment.store`: the SQLite results database;
* :mod:`~backdoorkit.experiment.report`: the papers' tables (Markdown, CSV, LaTeX) and figures;
* :mod:`~backdoorkit.experiment.demo`: the built-in demo on the embedded digits data.
"""

from backdoorkit.experiment.runner import RunSummary, run_experiment
from backdoorkit.experiment.spec import Cell, Plan, Spec, expand, load_spec, parse_spec
from backdoorkit.experiment.store import ResultStore

__all__ = [
    "Cell",
    "Plan",
    "ResultStore",
    "RunSummary",
    "Spec",
    "expand",
    "load_spec",
    "parse_spec",
    "run_experiment",
]
