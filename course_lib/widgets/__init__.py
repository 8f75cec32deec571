"""Notebook widgets: they only display frames the library computes (no diffusion math here).

NoisingExplorer  scrub t through the forward process q(x_t | x0) of a noise schedule (chapter 1).
DenoisingPlayer  watch a sampler denoise live, then scrub its cached trajectory; with a text-to-image checkpoint
                 (`DenoisingPlayer.from_pretrained("shapes32-t2i")`) also a prompt box and a guidance_scale slider.
FillPlayer       watch an autoregressive model write an image token by token (scan lines, or VQ codes) (chapter 8).
"""
from .noising import NoisingExplorer
from .fill import FillPlayer
from .player import DenoisingPlayer

__all__ = ["NoisingExplorer", "DenoisingPlayer", "FillPlayer"]
