"""Read models folded from the log: the engine, the projections, and queries over them."""

from ledger.projections.custody import ALL, BatchState, Lineage, Shares, Shipments
from ledger.projections.engine import Progress, Projection, ProjectionEngine

__all__ = ["ALL", "BatchState", "Lineage", "Progress", "Projection", "ProjectionEngine", "Shares", "Shipments"]
