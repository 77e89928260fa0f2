"""Random ping streams for dataflow and integration tests (seeded, reproducible)."""

from __future__ import annotations

import random

from tests import constants
from tests.oracle import P
from tests.segment_oracle import SP

T0 = float(constants.T0)

BAD = [
    b"{oops",                                                        # invalid_json
    b"[1, 2, 3]",                                                    # invalid_json
    b'{"driver_id": 1}',                                             # missing_field
    b'{"driver_id": -3, "timestamp": 1514779230, "on_duty": 1}',     # invalid_field
    b'{"driver_id": 7, "timestamp": "soon", "on_duty": 1}',          # invalid_field
    b'{"driver_id": 7, "timestamp": 1514779230, "on_duty": "yes"}',  # invalid_field
    b'{"driver_id": 7, "timestamp": 4102444800, "on_duty": 1}',      # future_timestamp (2100)
    b'{"driver_id": 7, "timestamp": 1514779230, "on_duty": 1, "pad": "' + b"x" * 70000 + b'"}',  # too_large
]


def stream(seed: int, partitions: int = 3, per_partition: int = 400, drivers: int = 150,
           horizon: float = 1800, pace: float = 3.0) -> list[list[object]]:
    """Partitions of unequal length and pace, with late, too-late, duplicate and bad pings.

    ``pace`` is the mean event-time step between two pings of a partition (s).
    """
    rng = random.Random(seed)
    out = []
    for p in range(partitions):
        clock = T0 + rng.randint(0, 300)
        msgs: list[object] = []
        for _ in range(per_partition * (p + 1) // 2):
            clock += rng.uniform(0, 2 * pace)
            roll = rng.random()
            if roll < 0.03:
                msgs.append(rng.choice(BAD))
            elif roll < 0.05 and msgs:
                msgs.append(rng.choice(msgs))  # duplicate delivery
            else:
                if roll < 0.10:
                    shift = -rng.uniform(60, 600)  # late
                elif roll < 0.12:
                    shift = -rng.uniform(horizon + 100, horizon + 2200)  # too late
                else:
                    shift = 0.0
                msgs.append(P(rng.randrange(drivers), round(clock + shift, 3), rng.random() < 0.7))
        out.append(msgs)
    return out


CITIES = {"Hong Kong": (22.30, 114.17), "London": (51.50, -0.12), "Lagos": (6.52, 3.38),
          "São Paulo": (-23.55, -46.63)}
VEHICLES = ["car", "van", "motorbike", "bicycle"]
BAD_FIELDS = [("city", 7), ("city", ""), ("city", "x" * 65), ("vehicle_type", ["van"]),
              ("vehicle_type", None), ("lat", "22.3"), ("lat", 91), ("lng", -181.0),
              ("lat", True), ("lng", None)]


def segment_stream(seed: int, **kwargs) -> list[list[object]]:
    """:func:`stream` whose valid pings carry ``city``, ``vehicle_type``, ``lat``, ``lng``
    (:class:`tests.segment_oracle.SP`): each driver has a city and a vehicle and moves
    around the city; some pings miss a field or carry a bad one."""
    rng = random.Random(seed * 7919 + 1)
    names = sorted(CITIES)
    out = []
    for messages in stream(seed, **kwargs):
        converted: list[object] = []
        for msg in messages:
            if not isinstance(msg, P):
                converted.append(msg)
                continue
            d = int(msg.driver)
            city = names[d % len(names)]
            lat0, lng0 = CITIES[city]
            fields = {"city": city, "vehicle_type": VEHICLES[d % len(VEHICLES)],
                      "lat": round(lat0 + rng.uniform(-0.03, 0.03), 6),
                      "lng": round(lng0 + rng.uniform(-0.03, 0.03), 6)}
            roll = rng.random()
            if roll < 0.08:
                del fields[rng.choice(sorted(fields))]
            elif roll < 0.16:
                name, bad = rng.choice(BAD_FIELDS)
                fields[name] = bad
            converted.append(SP(msg.driver, msg.time, msg.on_duty, tuple(fields.items())))
        out.append(converted)
    return out
