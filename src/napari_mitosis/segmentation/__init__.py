"""Mitosis segmentation: the U-Net run over arrays and slides (probability, labels,
boxes, pseudo-masks) and its training.

May import `engine`, `models` and `io`.
"""
