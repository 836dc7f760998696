"""The report: reads a run's tables only (no model code; `tests/test_layers.py` checks it).

`tables` (loaders and shared row selections), `claims` (every claim rule and threshold; the explainability
vector's rules in `xvec_claims`), `findings` (prose rendered from the CSVs), `fidelity` (notebook 03's
verdicts), `figures` (every report figure) with the per-notebook builders `fidelity_plots`,
`throughput`, `ltx` and `plots`, `book` (REPORT.md) and `readme` (the README's claims block).
"""
