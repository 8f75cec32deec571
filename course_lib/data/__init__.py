"""Data for the course: the captioned shapes dataset, one real photo, and toy 2D point clouds."""
from .photo import photo
from .shapes import (BACKGROUNDS, COLORS, HELD_OUT_PAIRS, POSITIONS, SHAPES, SIZES, TEMPLATES, Attributes, Jitter,
                     ShapesDataset, caption, coverage, random_attributes, render)
from .toy2d import TOY2D, toy2d

__all__ = ["SHAPES", "COLORS", "SIZES", "POSITIONS", "BACKGROUNDS", "TEMPLATES", "HELD_OUT_PAIRS", "Attributes", "Jitter",
           "render", "coverage", "caption", "random_attributes", "ShapesDataset", "photo", "toy2d", "TOY2D"]
