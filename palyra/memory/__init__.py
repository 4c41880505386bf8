"""Memory store (spec §7): schema, hash embeddings, safe FTS queries, ops and queries."""

from palyra.memory.embedding import EMBEDDING_DIMS, EMBEDDING_MODEL_ID, EMBEDDING_VERSION
from palyra.memory.query import build_fts_query, fts_terms
from palyra.memory.schema import SCHEMA_SQL
from palyra.memory.store import (
    MAX_MEMORY_ITEM_BYTES,
    BackfillReport,
    MemoryHit,
    MemoryItem,
    MemoryQueries,
    RetentionPolicy,
    RetentionReport,
    augment_prompt,
    auto_inject_payload,
    backfill_embeddings_op,
    delete_op,
    expire_op,
    fence,
    ingest_op,
    purge_op,
    retention_op,
)

__all__ = [
    "EMBEDDING_DIMS",
    "EMBEDDING_MODEL_ID",
    "EMBEDDING_VERSION",
    "MAX_MEMORY_ITEM_BYTES",
    "SCHEMA_SQL",
    "BackfillReport",
    "MemoryHit",
    "MemoryItem",
    "MemoryQueries",
    "RetentionPolicy",
    "RetentionReport",
    "augment_prompt",
    "auto_inject_payload",
    "backfill_embeddings_op",
    "build_fts_query",
    "delete_op",
    "expire_op",
    "fence",
    "fts_terms",
    "ingest_op",
    "purge_op",
    "retention_op",
]
