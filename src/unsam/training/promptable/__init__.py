"""Training of the promptable model (PROMPTABLE.md §3): clicks and targets, many-to-many matching,
losses, the resumable loop.

Modules: ``targets`` (click sampling, target sets, boxes), ``matching`` (Hungarian matching with
the spec's costs), ``losses`` (point-sampled BCE / dice, IoU head, boxes), ``config``
(:class:`PromptableTrainConfig`), ``loop`` (:func:`train_promptable`).
"""
