"""The tiled engine every model shares: the tile grid, the read-ahead/batch/merge loop
(`tiled_inference.iter_tiled`, `TiledRun`), the mergers that place each batch's outputs,
banded connected components, tissue detection and the training log.

May import `io` and `models`.
"""
