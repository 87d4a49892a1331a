"""The bottom I/O layer: image decoding/encoding and atomic file writes.

Imports nothing of `lowlight_jax` or `data_pipelines`, so both (and the CLIs) can use it without import cycles.
"""
