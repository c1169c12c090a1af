"""slicenet: gradient-free, k-NN sliced CNNs for edge boards.

Pipeline, one module per stage: data -> trunk -> fitness -> search -> knn -> engine -> runs (CLI shell).
"""

__version__ = "0.1.0"
