"""The pure core: parsing pings, windows, panes, watermarks, the partition
reader, the shard state, the row book and segments. No I/O: everything here is
tested directly (and with hypothesis) and driven by the shells in
:mod:`presence.io` and the wiring in :mod:`presence.flow`."""
