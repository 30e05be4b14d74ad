"""wsol-harness: weakly-supervised object localization benchmarks with explicit protocols."""

__version__ = "0.1.0"
