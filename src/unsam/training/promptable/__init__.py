"""Training of the promptable model (PROMPTABLE.md §3): clicks and targets, many-to-many matching,
losses, the trainer.

Modules: ``targets`` (click sampling, target sets, boxes), ``geometry`` (point sampling of masks,
box geometry), ``matching`` (Hungarian matching with the spec's costs), ``losses`` (point-sampled
BCE / dice, IoU head, boxes), ``config`` (:class:`PromptableTrainConfig`), ``backbone_init``
(Swin / MoBY weights), ``trainer`` (:func:`train_promptable`; the run is
:class:`unsam.training.engine.Trainer`'s).
"""
