"""The I/O shell: Kafka (:mod:`.kafka`), MongoDB (:mod:`.mongo`), the in-memory
topic of the tests (:mod:`.memory`), the Bytewax source (:mod:`.source`) and
the recovery-directory reader (:mod:`.recovery`)."""
