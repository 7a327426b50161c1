"""Reading and writing: slides, plain images, pyramidal TIFF, OME-Zarr, QuPath GeoJSON,
annotation formats (ICPR/MITOS CSVs, ASAP XML, COCO RLE, box CSVs) and atomic outputs.

The lowest stage: imports no other subpackage. `formats.open_slide` is the one entry point
for pixels; `openslide_source` is the only module that touches OpenSlide.
"""
