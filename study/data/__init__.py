"""Detection and classification data. Import from the modules (importing this package loads no torch):

- `study.data.coco`: `load_coco`, `InstanceDataset`, `collate` (COCO instances through pycocotools)
- `study.data.checks`: `check_file`, `check_instances` (what `study data check` reports)
- `study.data.sampling`: nested subsets and the data order, pure functions of seeds and iterations
- `study.data.synthetic`: the embedded synthetic detection set (`study data synth`)
- `study.data.classification`: the pre-training stage's data (synthetic shapes or ImageFolder)
"""
