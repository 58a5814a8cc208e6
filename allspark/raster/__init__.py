"""Imagery: catalog search, loading into one grid, the scene and probability stores, windows, blending and COGs."""
