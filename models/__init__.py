"""The model package: Mask R-CNN builders, norms, init and the backbone pre-training model.

Importable without Ray, a GPU or COCO. Filled in by the model issue (#3).
"""
