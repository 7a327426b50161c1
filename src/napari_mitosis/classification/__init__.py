"""Tumour classification: patch runs over slides into heatmaps and masks, whole-image
scores, class-folder and annotated-slide data, training, metrics (AUC, F1, F_med) and the
Camelyon16 FROC.

May import `engine`, `models` and `io`.
"""
