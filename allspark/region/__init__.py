"""Region imagery: a STAC catalog's scenes over an area -> land-cover class map and probabilities (COG), chips (GeoParquet)."""
