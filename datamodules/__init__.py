"""Lhotse-based data pipelines for lightning_most."""
