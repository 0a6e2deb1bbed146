"""Storage maintenance: compaction, retention, garbage collection, integrity.

Each job is a restart-safe actor publishing through the same optimistic
snapshot stream as the coordinator.
"""
