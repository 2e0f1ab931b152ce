"""The face pipeline: model packs, image decoding, detection, alignment, quality, embedding.

A library: it knows nothing of HTTP, organisations or keys.
"""
