"""singer-recsys: recommends singers who sound alike, from their singing."""

__version__ = "0.1.0"
