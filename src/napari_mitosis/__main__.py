"""``python -m napari_mitosis`` is the ``napari-mitosis`` command."""

from napari_mitosis.cli import main

raise SystemExit(main())
