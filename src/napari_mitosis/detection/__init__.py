"""Mitosis detection: the Faster R-CNN run over arrays and slides, densities and the
10-HPF hotspot, training, and scoring by the challenge rule (centroids within 8 µm).

May import `segmentation`, `engine`, `models` and `io`.
"""
