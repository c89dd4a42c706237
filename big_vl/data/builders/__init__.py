"""TFDS dataset builders shipped with big_vl (generated locally, no download)."""
