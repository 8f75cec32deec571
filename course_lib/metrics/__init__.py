"""Quality and cost numbers, measured instead of eyeballed. Every metric the course reports is defined here once.

pixels      graininess (chapter 2), saturation (chapter 3), PSNR (chapter 4): numbers from pixels alone
classifier  prompt / attribute accuracy and the Fréchet distance, read by the shapes classifier (chapters 2-4)
clip        a CLIP's embeddings, zero-shot accuracy and retrieval (chapter 5)
flops       the work of a network call, attention included (chapter 4's pixels-vs-latents table, chapter 6)
prompts     what the measurements test on: fresh and held-out prompts, real renders of the same attributes

Sweeps that produce the tables are in course_lib.evaluation; timings in course_lib.bench.
"""
from .classifier import (CLASSIFIER_NAME, PROMPT_KEYS, attribute_accuracy, classifier_accuracy, classifier_features,
                         feature_stats, frechet_distance, frechet_distance_from_stats, frechet_distance_se,
                         load_classifier, prompt_accuracy, prompt_matches)
from .clip import (ZERO_SHOT, encode_images, encode_texts, retrieval_top1, similarity_matrix, zero_shot_accuracy,
                   zero_shot_predict, zero_shot_prompts)
from .flops import count_flops, decode_gflops, forward_gflops, gflops_per_step
from .pixels import CLIP_LEVEL, graininess, high_frequency_energy, psnr, saturation
from .prompts import Prompt, fresh_prompts, held_out_prompts, make_prompt, reference_renders

__all__ = ["CLASSIFIER_NAME", "PROMPT_KEYS", "attribute_accuracy", "classifier_accuracy", "classifier_features",
           "feature_stats", "frechet_distance", "frechet_distance_from_stats", "frechet_distance_se", "load_classifier",
           "prompt_accuracy", "prompt_matches",
           "ZERO_SHOT", "encode_images", "encode_texts", "retrieval_top1", "similarity_matrix", "zero_shot_accuracy",
           "zero_shot_predict", "zero_shot_prompts", "count_flops", "decode_gflops", "forward_gflops",
           "gflops_per_step", "CLIP_LEVEL",
           "graininess", "high_frequency_energy", "psnr", "saturation", "Prompt", "fresh_prompts", "held_out_prompts",
           "make_prompt", "reference_renders"]
