"""napari-mitosis: whole-slide breast-cancer histopathology in napari and in scripts.

The names below are the napari-free core; importing them never imports napari or Qt.
"""

from napari_mitosis.errors import (
    CorruptSlideError,
    OutputExistsError,
    SlideError,
    SlideNotFoundError,
    UnsupportedFormatError,
)
from napari_mitosis.geojson import Annotation, read_geojson, write_geojson
from napari_mitosis.pyramid_tiff import write_pyramid_tiff
from napari_mitosis.slide import Slide, SlideMetadata, open_slide
from napari_mitosis.synthetic import ensure_sample_slide, synthetic_slide, write_synthetic_slide

__version__ = "0.1.0"

__all__ = [
    "Annotation",
    "CorruptSlideError",
    "OutputExistsError",
    "Slide",
    "SlideError",
    "SlideMetadata",
    "SlideNotFoundError",
    "UnsupportedFormatError",
    "ensure_sample_slide",
    "open_slide",
    "read_geojson",
    "synthetic_slide",
    "write_geojson",
    "write_pyramid_tiff",
    "write_synthetic_slide",
]
