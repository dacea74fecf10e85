"""The model package: Mask R-CNN builders, norms, init and the backbone pre-training model.

Pure PyTorch/torchvision: importable without Ray, a GPU or COCO. Import from the modules:

- `models.mask_rcnn`: `build_mask_rcnn`, `build_resnet`, the detector profiles
- `models.norms`: `get_norm` (gn | syncbn | bn | frozen_bn), `convert_sync_batchnorm`,
  `parameter_groups` (no weight decay on norms)
- `models.init`: `init_scratch`, `load_backbone` (pretrained arm), `plan_backbone_load`, `LoadReport`
- `models.weight_files`: `load_state_file` (safe loading), `read_backbone_state` (torchvision, timm,
  Detectron `.pkl`, `.safetensors`, torchvision weights names), `backbone_layout`
- `models.classifier`: the pre-training classifier and `backbone_state`
- `models.choices`: the closed sets of names (no torch import; the config reads them)
- `models.small_convs`, `models.roi_align`: CPU paths the detector builder puts in (convs over
  2 x 2 maps as a matmul, RoIAlign's backward as matrix products); the same results
"""
