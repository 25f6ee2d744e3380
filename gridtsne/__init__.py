"""gridtsne: lay a photo collection out on a grid so that similar photos are neighbours."""

__version__ = "0.1.0"
