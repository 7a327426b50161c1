"""Synthetic H&E slides and fields with a known answer (mitoses at known places), for the
napari sample data, the tests and the demo.

May import `io`.
"""
