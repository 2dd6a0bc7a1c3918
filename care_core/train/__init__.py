"""Training CARE: Stage I (iBOT on feature grids), Stage II (RNA / protein alignment), fine-tuning; one trainer.

``train(config, run_dir)`` runs (or resumes) one job and yields its progress events (``trainer.train``).
"""

from care_core.train.trainer import train

__all__ = ["train"]
