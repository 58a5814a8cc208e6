"""Small real inputs and configs for the file-driven flows (trajectories, sensors, traffic).

Shared by each flow's tests and the notebook tests. Every input is a slice of ../shared/data, and
``shared_data`` skips the test with the reason when that is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from allspark.sensors.config import SensorsConfig
from allspark.traffic.config import TrafficConfig
from allspark.trajectories.config import TrajectoriesConfig
from tests.conftest import shared_data

# -- trajectories: ETH/UCY ------------------------------------------------------------------------


def eth_slice(folder: Path, rows: int = 300) -> dict[str, Path]:
    """The first ``rows`` rows of the real eth test file and of one training and validation file (leave-one-out)."""
    source = shared_data("eth_ucy", "eth")
    files = {}
    for split, name in (("test", "biwi_eth.txt"), ("train", "crowds_zara01_train.txt"),
                        ("val", "crowds_zara01_val.txt")):
        lines = (source / split / name).read_text().splitlines()[:rows]
        files[split] = folder / split / name
        files[split].parent.mkdir(parents=True)
        files[split].write_text("\n".join(lines) + "\n")
    return files


def trajectories_config(files: dict[str, Path], output_dir: Path, **changes) -> TrajectoriesConfig:
    """ETH on the map (Swiss LV95, dated), 1 LM layer, 4 modes, 32 training windows: 4 windows published."""
    base = {
        "name": "eth-slice", "train_files": [files["train"]], "predict_files": [files["test"]],
        "origin": (2683600.0, 1248000.0), "crs": "EPSG:2056", "start_time": "2009-01-01T12:00:00Z",
        "model": {"modes": 4, "num_queries": 4}, "language": {"layers": 1},
        "train": {"epochs": 1, "batch_size": 16, "max_windows": 32}, "output_dir": output_dir,
    }
    return TrajectoriesConfig(**base | changes)


# -- sensors: PRSA Beijing ------------------------------------------------------------------------

AOTI = "PRSA_Data_Aotizhongxin_20130301-20170228.csv"
DINGLING = "PRSA_Data_Dingling_20130301-20170228.csv"


PRSA_CONFIG = Path(__file__).resolve().parents[1] / "deployments" / "sensors-prsa.yaml"


def prsa_table() -> dict:
    """The PRSA ``table`` block of the example deployment config (the library knows nothing of PRSA)."""
    return yaml.safe_load(PRSA_CONFIG.read_text())["table"]


def sensors_config(output_dir: Path, **changes) -> SensorsConfig:
    """Two real stations over ten days (2 x 240 hours), 1 LM layer, 96 training rows, the example's table block."""
    data = shared_data("prsa_beijing")
    base = {
        "name": "test-sensors",
        "inputs": [str(data / AOTI), str(data / DINGLING)],
        "table": prsa_table(),
        "period": ("2014-01-01T00:00", "2014-01-10T23:00"),
        "language": {"layers": 1},
        "train": {"epochs": 1, "max_train_rows": 96},
        "output_dir": output_dir,
    }
    return SensorsConfig(**base | changes)


# -- traffic: the Los-loop week -------------------------------------------------------------------

SENSORS, STEPS = 20, 300
TRAFFIC_ZONE = "America/Los_Angeles"


def traffic_slice(folder: Path, sensors: int = SENSORS, steps: int = STEPS, id_order: bool = False) -> dict[str, Path]:
    """The first ``sensors`` x ``steps`` of the Los-loop week, with the matching block of its adjacency.

    ``id_order``: columns (and adjacency rows) sorted by sensor id, the order a long table's sensors take.
    """
    data = shared_data("traffic_la")
    speeds = pd.read_csv(data / "tgcn_los" / "los_speed.csv", dtype=str).iloc[:steps, :sensors]
    speeds.iloc[4, 2] = "0"  # a missing reading, METR-LA style
    order = np.argsort(speeds.columns) if id_order else np.arange(sensors)
    speeds.iloc[:, order].to_csv(folder / "speed.csv", index=False)
    adjacency = np.loadtxt(data / "tgcn_los" / "los_adj.csv", delimiter=",")[:sensors, :sensors]
    np.savetxt(folder / "adj.csv", adjacency[np.ix_(order, order)], delimiter=",")
    return {"speeds": folder / "speed.csv", "adjacency": folder / "adj.csv",
            "locations": data / "dcrnn_sensor_graph" / "graph_sensor_locations.csv"}


LOSLOOP_START = "2012-03-05T00:00:00-08:00"
"""The Los-loop week's nominal start (a Monday midnight, Pacific time): its CSV has no timestamps."""


def traffic_long(speeds: Path, path: Path, locations: Path | None = None) -> Path:
    """A wide speeds CSV melted into a long table at ``path`` (.csv or .parquet), its rows shuffled.

    Columns: sensor, time (:data:`LOSLOOP_START` plus 5 minutes a row, on the Los Angeles
    clock), speed and, with ``locations``, each sensor's longitude and latitude. A CSV keeps the
    text (time without offset, "0" = no reading); a Parquet file holds zone-aware times and float
    speeds, null where there is no reading.
    """
    wide = pd.read_csv(speeds, dtype=str)
    start = pd.Timestamp(LOSLOOP_START).tz_convert(TRAFFIC_ZONE)
    wide.insert(0, "time", pd.date_range(start, periods=len(wide), freq="5min"))
    rows = wide.melt(id_vars="time", var_name="sensor", value_name="speed").sample(frac=1, random_state=0)
    if locations is not None:
        places = pd.read_csv(locations, dtype=str).rename(columns={"sensor_id": "sensor"})
        rows = rows.merge(places[["sensor", "longitude", "latitude"]], on="sensor", how="left")
    if path.suffix == ".csv":
        rows.assign(time=rows["time"].dt.strftime("%Y-%m-%d %H:%M:%S")).to_csv(path, index=False)
    else:
        numbers = rows.drop(columns=["sensor", "time"]).apply(pd.to_numeric)
        rows.assign(**numbers).replace({"speed": {0: np.nan}}).to_parquet(path, index=False)
    return path


def traffic_table(location: bool = False) -> dict:
    """The ``table`` block of :func:`traffic_long`'s tables (``location``: their longitude/latitude columns)."""
    return {"id": "sensor", "targets": ["speed"], "missing_values": ["0"],
            "time": {"column": "time", "timezone": TRAFFIC_ZONE, "step": "5min"},
            **({"location": {"x": "longitude", "y": "latitude"}} if location else {})}


def traffic_config(files: dict[str, Path], output_dir: Path, **fields) -> TrafficConfig:
    """1 LM layer, width 16, one epoch."""
    given = {**files, **fields}
    start = {} if "table" in given or "start" in given else {"start": LOSLOOP_START}  # a wide CSV's nominal start
    return TrafficConfig(
        name="test-traffic", **files, output_dir=output_dir, **start,
        model={"width": 16, "num_queries": 4, "bridge_depth": 1}, language={"layers": 1},
        train={"epochs": 1, "batch_size": 32}, **fields,
    )
