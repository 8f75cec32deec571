"""Data for the course: the captioned shapes dataset, one real photo, toy 2D point clouds.

DataSpec names which of them (and how many, with which seed) a training recipe draws.
"""
from .photo import photo
from .shapes import (BACKGROUNDS, COLORS, HELD_OUT_PAIRS, POSITIONS, SHAPES, SIZES, TEMPLATES, VOCAB, Attributes,
                     Jitter, ShapesDataset, attribute_indices, caption, coverage, random_attributes, render)
from .spec import DataSpec
from .toy2d import TOY2D, toy2d

__all__ = ["SHAPES", "COLORS", "SIZES", "POSITIONS", "BACKGROUNDS", "TEMPLATES", "HELD_OUT_PAIRS", "VOCAB",
           "Attributes", "Jitter", "attribute_indices", "render", "coverage", "caption", "random_attributes",
           "ShapesDataset", "photo", "toy2d", "TOY2D", "DataSpec"]
