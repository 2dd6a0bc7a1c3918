"""Training CARE: Stage I (iBOT on feature grids), Stage II (RNA / protein alignment), fine-tuning; one trainer."""
