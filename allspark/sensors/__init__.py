"""Sensor tables (Beijing PRSA air quality): station time series in, PM2.5 per station and hour out.

``read`` reads and checks the station CSVs and the locations file, ``config`` is the run config
(:class:`~allspark.sensors.config.SensorsConfig`), ``inputs`` turns stored rows into the table
model's inputs, fits it and scores it, and ``steps`` holds the four steps every kind shares
(ingest, train, predict, publish): the rows are stored as Parquet in the run's work folder, the
model fine-tuned on a split of them, every row predicted and the result published as GeoParquet
(one point per station and hour) with its metrics, model and STAC catalog.
"""
