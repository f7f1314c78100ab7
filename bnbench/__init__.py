"""bnbench: ablation studies of batch normalization, driven by Hydra configs."""

__version__ = "0.6.0"
