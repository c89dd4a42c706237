"""Data curation: nearest-neighbour indexes, filters and curated outputs
(used by `python -m big_vl.curate`, `big_vl.knn` and `big_vl.embed`)."""
