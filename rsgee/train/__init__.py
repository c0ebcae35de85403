"""Datasets over the archive, fusion and segmentation training, metrics, generation."""
