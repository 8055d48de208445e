"""Running a trained model: the one layer that loads a model and predicts (docs/architecture.md).

Below ``galeno.ner``, ``galeno.serve`` and ``galeno.registry``, and above the corpus stage, the
config and tracking. Whatever scores, serves or registers a model calls these modules, so the dev
F1 that gates a promotion is computed by the code that Serve replicas and MLflow users run.

- ``text``: sentences and word tokens with character offsets (the training-time tokenisation).
- ``bio``: BIO tags to entity spans.
- ``align``: words to sub-token windows and back (sliding windows over long sentences).
- ``source``: a model by local path or ``models:/`` URI (registry versions, aliases).
- ``precision``: the device, dtype, int8 and runtime a model runs with; ``onnx_runtime`` its ONNX Runtime form.
- ``loading``: a loaded model with its tokenizer, window limit and labels (:class:`~galeno.inference.loading.Loaded`).
- ``forward``: batched forward passes planned against padding.
- ``token_classification``: words or texts to entities, with offsets into the input.
- ``fill_mask``: the fillers of a mask.

Nothing is imported here: importing ``galeno.inference`` must not import torch.
"""
