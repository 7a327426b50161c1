"""What ``make demo`` runs: small demo models trained on synthetic data, then the whole
pipeline on the embedded sample slides, shown in napari.

May import everything, the napari layer included (to show the result).
"""
