"""The recipe index (hnswlib), the recipe store (SQLite) and what re-ranking needs. No torch here."""

from malm.edge_index.builder import (
    Encoded,
    EncodeFn,
    IndexReport,
    add_recipes,
    build_index,
    encode_records,
    remove_recipes,
)
from malm.edge_index.hnsw import HnswIndex, IndexSettings
from malm.edge_index.records import ReadReport, RecipeRecord, RecordError, iter_jsonl, parse_record
from malm.edge_index.rerank import RerankSettings, TokenStore, late_interaction
from malm.edge_index.store import RecipeStore

__all__ = [
    "EncodeFn", "Encoded", "HnswIndex", "IndexReport", "IndexSettings", "ReadReport", "RecipeRecord", "RecipeStore",
    "RecordError", "RerankSettings", "TokenStore", "add_recipes", "build_index", "encode_records", "iter_jsonl",
    "late_interaction", "parse_record", "remove_recipes",
]
