"""Evaluators: zero-shot classification, retrieval, ... (see common.py)."""
