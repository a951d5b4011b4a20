"""Datasets, image pre-processing and label handling."""
