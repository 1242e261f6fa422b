"""lowres: low-resolution robustness experiments for face recognition."""

__version__ = "0.1.0"
