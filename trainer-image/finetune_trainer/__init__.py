"""The trainer: one FineTuneJob spec in, merged, verified, published artifacts out.

``python -m finetune_trainer`` is what trainer pods run; ``ftj run FILE`` runs the same
pipeline on this machine. The pipeline reads top to bottom in :mod:`finetune_trainer.run`.
"""
