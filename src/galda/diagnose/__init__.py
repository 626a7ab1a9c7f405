"""Domain-shift diagnostics for astronomers.

- Before training (:mod:`galda.diagnose.data`): how different are the source and target files —
  pixel and flux histograms, power spectra, noise, an MMD two-sample test and a proxy A-distance.
- After training (:mod:`galda.diagnose.runs`): did the features mix the domains — UMAP / t-SNE of
  test-set features, a domain classifier on them, and integrated-gradients saliency maps.

Command line: ``python -m galda.diagnose DATA --out DIR`` or
``python -m galda.diagnose RUN [RUN ...] --out DIR``. The classical Gini–M20–asymmetry row
lives in :mod:`galda.classical`.
"""

from galda.diagnose.data import diagnose_data, resolve_domain_paths

__all__ = ["diagnose_data", "resolve_domain_paths"]
