"""Files shipped with the package: the demo checkpoint (written by benchmarks/train_demo_model.py)."""
