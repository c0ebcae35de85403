"""Radiometry, terrain, tiling and the archive."""
