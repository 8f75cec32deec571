"""Sweeps: measure what a setting does across its range, one row per value; the tables the notebooks show.

sweeps   cfg_sweep (chapter 3), steps_sweep (chapter 2), pixel_vs_latent and kl_sweep (chapter 4)
samplers samplers_sweep (chapter 7): quality against model calls for every sampler, and its summary
scaling  scaling_sweep (chapter 6): DiTs and U-Nets trained at equal compute, measured along their curves; the fit
ar_vs_diffusion  ar_vs_diffusion (chapter 8): autoregressive (pixels, VQ codes) against diffusion: cost, quality,
         and the raster-order claim tested three ways
cli      `python -m course_lib.evaluation {cfg,steps,samplers,pixel-vs-latent,kl,scaling,ar-vs-diffusion,floors}`:
         the sweeps at full size; they write the JSON files in data/ that the notebooks read (cfg and steps with
         -o); floors measures every shipped checkpoint against its quality floor (course_lib.floors)

The numbers themselves, and the prompts they test on, come from course_lib.metrics; the timings from
course_lib.bench.
"""
from course_lib.metrics.prompts import (DEFAULT_TEMPLATE, EVAL_SEED, REFERENCE_SEED, TRAINING_SEED, Prompt,
                                       fresh_prompts, held_out_prompts, make_prompt, reference_renders)

from .ar_vs_diffusion import ar_vs_diffusion
from .cli import (AR_PATH, CFG_HELD_OUT_PATH, CFG_SWEEP_PATH, KL_SWEEP_PATH, PIXEL_VS_LATENT_PATH, SAMPLERS_PATH,
                  SCALING_PATH, STEPS_SWEEP_PATH, main)
from .samplers import SAMPLER_NFES, samplers_sweep, summarize
from .sweeps import (CFG_SCALES, PIXEL_VS_LATENT_MODELS, UNCONDITIONAL_MODEL, Sweep, cfg_sweep, kl_sweep,
                     pixel_vs_latent, score, steps_sweep)

__all__ = ["AR_PATH", "ar_vs_diffusion", "CFG_HELD_OUT_PATH", "CFG_SWEEP_PATH", "KL_SWEEP_PATH",
           "PIXEL_VS_LATENT_PATH", "SAMPLERS_PATH", "SCALING_PATH", "STEPS_SWEEP_PATH", "SAMPLER_NFES",
           "samplers_sweep", "summarize", "main", "DEFAULT_TEMPLATE", "EVAL_SEED", "REFERENCE_SEED",
           "TRAINING_SEED", "Prompt", "fresh_prompts", "held_out_prompts", "make_prompt", "reference_renders",
           "CFG_SCALES", "PIXEL_VS_LATENT_MODELS", "UNCONDITIONAL_MODEL", "Sweep", "cfg_sweep", "kl_sweep",
           "pixel_vs_latent", "score", "steps_sweep"]
