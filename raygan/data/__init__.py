"""Corpora: preparation (raygan.data.prepare), the directory layout, reading back
(raygan.data.read), tokenizers and the storage behind paths and URIs.
"""
