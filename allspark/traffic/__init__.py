"""Traffic graphs (METR-LA style): sensor speeds and locations (and an adjacency) -> AllSpark speed forecasts per
sensor and horizon.

``config.py`` holds :class:`~allspark.traffic.config.TrafficConfig`; ``read.py`` reads and checks the
speeds (a wide CSV: header = sensor ids, 0 = no reading; or, with the config's ``table`` block, a
long CSV/Parquet table of sensor, time and speed, pivoted to the same grid), the adjacency if given
and the sensor locations; ``inputs.py`` turns the stored graph into the model's windows (12 steps
in, 12 out, chronological 70/10/20 split) and scores forecasts against two baselines (last value,
historical average); ``steps.py`` is the pipeline (ingest, train, predict, publish). The adjacency
is optional, checked and kept but not used by the model: the STAEformer-style graph encoder learns
the spatial relations by attention over the nodes. By default (``model.predict_change``) the model
learns the change from each sensor's last observed speed; sensors without a location stop the run,
or with ``missing_location: drop`` are left out and listed in metrics.json.
"""
