#!/bin/sh
# Make bytewax's recovery partitions on first start, then run the command.
set -e
if ! ls /recovery/*.sqlite3 >/dev/null 2>&1; then
    python -m bytewax.recovery /recovery "${PRESENCE_RECOVERY_PARTITIONS:-4}"
fi
exec "$@"
