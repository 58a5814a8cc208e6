"""Sensor tables of any layout: station time series in, their targets per station and time (or a forecast) out.

``read`` reads and checks the station tables through the config's ``table`` block
(:mod:`allspark.core.tables`), ``config`` is the run config
(:class:`~allspark.sensors.config.SensorsConfig`), ``inputs`` turns stored rows into the table
model's inputs and baselines, fits it and scores it, and ``steps`` holds the four steps every
kind shares (ingest, train, predict, publish): the rows are stored as Parquet in the run's work
folder, the model fine-tuned on a split of them, every row predicted and the result published as
GeoParquet (one point per station and target time) with its metrics, model and STAC catalog. The
PRSA Beijing air-quality tables are one example config (``deployments/sensors-prsa.yaml``).
"""
