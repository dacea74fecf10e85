"""Detection data: COCO loading and checks, nested subsets, data order, the synthetic set."""

from study.data.checks import CheckReport, DataError, check_file, check_instances
from study.data.coco import CocoSplit, InstanceDataset, collate, index_coco, load_coco
from study.data.sampling import IterationBatchSampler, global_batch, nested_subset, rank_slice, subset_size
from study.data.synthetic import SynthSpec, write_synthetic

__all__ = [
    "CheckReport", "CocoSplit", "DataError", "InstanceDataset", "IterationBatchSampler", "SynthSpec",
    "check_file", "check_instances", "collate", "global_batch", "index_coco", "load_coco",
    "nested_subset", "rank_slice", "subset_size", "write_synthetic",
]
