"""Training, in torch only (no Ray): one trial's loop (`loop`), its checkpointed state (`state`),
what it is built from (`build`), the optimisation and prediction steps (`steps`), COCO evaluation
(`evaluation`), the collectives over data-parallel ranks (`ranks`) and the backbone's
pre-training as a classifier (`pretrain`). Imports `models`, `study.config`, `study.plan`,
`study.data` and `study.layout`; the Ray Train jobs around these loops are in `study.tune.jobs`."""
