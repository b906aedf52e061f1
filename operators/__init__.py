"""DataMate operators: plain Python (no Dagster) shared by the CLI, Dagster assets, Ray workers and tests."""

import os

import pyarrow as pa

from operators.base import Deduplicator, Filter, FilterResult, Mapper, Operator, OperatorParams
from operators.registry import OperatorConfigError, build_operator, catalogue, get_operator_class, register

# Arrow's default allocator (mimalloc) keeps pages it has freed: streaming a 300k-document table a batch at a time
# held 115 MB for 22 MB of live buffers; jemalloc returning freed pages at once held 61 MB. Every process that
# streams batches imports the operators (run steps, their pool workers, Ray workers), so it is chosen here, once;
# ARROW_DEFAULT_MEMORY_POOL still decides when it is set.
if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
        pa.jemalloc_set_decay_ms(0)
    except NotImplementedError:  # a pyarrow built without jemalloc
        pass

__all__ = [
    "Deduplicator", "Filter", "FilterResult", "Mapper", "Operator", "OperatorConfigError", "OperatorParams",
    "build_operator", "catalogue", "get_operator_class", "register",
]
