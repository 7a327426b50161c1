"""Cohort runs: one slide's pipeline (tissue → tumour heatmap → mitoses in tumour →
summary numbers and files), the Dask runner over many slides, and its progress display.

May import the task subpackages and everything below them.
"""
