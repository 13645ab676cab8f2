"""ntkbook: code of the book that is not library code.

``ntkbook.small_data`` is chapter 8's experiment protocol (the small-data benchmark: data sets,
cross-validation grids, baselines from scikit-learn and SciPy). It is installed next to
``ntklib`` by the same ``pip install`` but kept out of it, so that ``import ntklib`` imports
torch and numpy and nothing heavier.
"""
