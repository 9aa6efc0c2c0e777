"""Training of the whole-image model (spec §6.3-6.6): its settings, backbone initialisation, the
trainer, self-training and the UnSAM+ merge.

Modules: ``config`` (:class:`TrainConfig`), ``backbone_init`` (DINO ResNet-50 weights),
``trainer`` (:func:`train`), ``selftrain`` (self-training rounds, UnSAM+ ground-truth merge).
The public names are re-exported lazily by :mod:`unsam.training`.
"""
