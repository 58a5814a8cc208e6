"""Pedestrian and vehicle trajectories: track files (ETH/UCY text or a CSV/Parquet table) are read and
checked (:mod:`.read`), cut into windows of observed and future steps around each focal agent with its
nearest neighbours and stored in Zarr, an AllSpark trajectory model with K candidate futures is
fine-tuned on them (:mod:`.inputs` turns windows into inputs and targets), and every agent and window
is published as GeoParquet with its K futures, probabilities and ADE/FDE against the truth and the
constant-velocity baseline (:mod:`.steps`, configured by :mod:`.config`).
"""
