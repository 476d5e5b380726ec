"""sparsesearch supernet: SparseViT window pruning on timm Swin, MACs, data, training, DIMAP."""
from .sparse_swin import SparseSwin, keep_count, validate_sparsity
from .macs import count_macs

__all__ = ["SparseSwin", "count_macs", "keep_count", "validate_sparsity"]
