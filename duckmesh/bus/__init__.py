"""The ingest bus: durable, ordered, idempotent transport with leases.

``protocol`` holds the backend-free contract; ``postgres`` the only backend
so far. The API and the coordinator use the protocol only.
"""

from duckmesh.bus.protocol import (
    Batch,
    BusRecord,
    IngestBus,
    IngestRecord,
    LeaseLost,
    NewReceipts,
    QuarantineEntry,
    Receipt,
    Receipts,
    RecordColumns,
    UploadBatch,
    UploadReceipt,
    UploadRequest,
    receipts_summary,
)

__all__ = [
    "Batch",
    "BusRecord",
    "IngestBus",
    "IngestRecord",
    "LeaseLost",
    "NewReceipts",
    "QuarantineEntry",
    "Receipt",
    "Receipts",
    "RecordColumns",
    "UploadBatch",
    "UploadReceipt",
    "UploadRequest",
    "receipts_summary",
]
