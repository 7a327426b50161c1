"""The napari layer: reader, writers, sample data and widgets, named in ``napari.yaml``.

It only converts between napari layers and the core; nothing in the core imports it.
"""
