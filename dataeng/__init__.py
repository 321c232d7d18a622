"""dataeng: a data engine for portrait segmentation."""

__version__ = "0.1.0"
