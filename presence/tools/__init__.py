"""The user's tools: the ``presence`` CLI (:mod:`.cli`, :mod:`.recovery_cli`),
the API and dashboard (:mod:`.api`, ``web/``), reports and charts
(:mod:`.reports`, :mod:`.plot`) and the ping simulator (:mod:`.simulate`)."""
