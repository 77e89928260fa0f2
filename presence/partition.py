"""Kept for recovery snapshots only: a snapshot stores a class by its module
path, and snapshots written before the move to :mod:`presence.core` name
``presence.partition.PartitionMark``. Import from :mod:`presence.core` instead."""

from presence.core.model import PartitionMark

__all__ = ["PartitionMark"]
