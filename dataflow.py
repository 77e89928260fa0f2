"""The presence job: ``python -m bytewax.run dataflow`` (settings: PRESENCE_* variables).

The path of a ping from Kafka to MongoDB is in ``presence/flow.py``;
start-up (settings, Kafka, MongoDB) in ``presence/app.py``.
"""

from presence.app import dataflow_from_env

flow = dataflow_from_env()
