"""backdoorkit: attack, defend, inspect and benchmark backdoors in image classifiers, with first-class
support for what model structure (residual / skip connections) does to backdoors."""

__version__ = "0.1.0"
