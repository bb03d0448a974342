"""Compatibility shim: these helpers live in tests/conftest.py (fixtures `tiny_config`, `make_dataset`,
`tiny_data`, `tiny_run`). Kept so tests written against the old module still run; new tests use the fixtures."""

from conftest import TINY, WORDS, make_dataset, tiny_config

__all__ = ["TINY", "WORDS", "make_dataset", "tiny_config"]
