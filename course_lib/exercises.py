"""Check cells for the notebooks' exercises: each checker compares a student's answer with course_lib.

A checker returns quietly when the answer is right and raises `AssertionError` with a hint when it is wrong,
so a notebook cell `check_two_steps(my_two_steps)` fails loudly on a wrong answer. The checkers never reveal
the reference code; they compare numbers on random inputs.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .schedules import NoiseSchedule, SCHEDULES


def _tolerance(want: torch.Tensor, atol: float, relative: bool) -> float:
    """atol, or with relative=True atol times the size of want's numbers (at least 1): DDPM's x_t reaches the
    hundreds when alpha_bar_t is tiny, where float32 round-off alone exceeds a fixed 1e-4."""
    return atol * max(1.0, want.abs().max().item()) if relative else atol


def _close(got, want, what: str, hint: str, atol: float = 1e-5, relative: bool = False) -> None:
    """Assert got ~ want (within `_tolerance`) with a message a student can act on."""
    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"{what}: expected a torch.Tensor, got {type(got).__name__}. {hint}")
    if got.shape != want.shape:
        raise AssertionError(f"{what}: expected shape {tuple(want.shape)}, got {tuple(got.shape)}. {hint}")
    if not bool(torch.isfinite(got).all()):
        raise AssertionError(f"{what}: your answer holds NaN or inf numbers. {hint}")
    err = (got.double() - want.double()).abs().max().item()
    tol = _tolerance(want, atol, relative)
    if not err <= tol:
        raise AssertionError(f"{what}: off by up to {err:.3g} (tolerance {tol:.2g}). {hint}")


def check_two_steps(fn: Callable) -> None:
    """Chapter 1: `fn(beta_1, beta_2)` must return (signal_scale, noise_std) of x_2 = signal_scale * x0 +
    noise_std * eps after two forward steps x_1 = sqrt(1 - beta_1) x0 + sqrt(beta_1) eps_1, x_2 = sqrt(1 - beta_2)
    x_1 + sqrt(beta_2) eps_2 (eps_1, eps_2 independent): a derivation, checked on several pairs of betas."""
    for beta_1, beta_2 in ((0.1, 0.3), (0.02, 0.5), (0.6, 0.05)):
        got = fn(beta_1, beta_2)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise AssertionError("return two numbers: (signal_scale, noise_std)")
        scale, std = (float(v) for v in got)
        keep = (1 - beta_1) * (1 - beta_2)  # the share of the signal's variance that survives both steps
        if abs(scale - keep) < 1e-6:
            raise AssertionError("signal_scale: the steps multiply x0 by square roots, sqrt(1 - beta) each")
        if abs(scale - keep**0.5) > 1e-6:
            raise AssertionError(f"betas {beta_1}, {beta_2}: signal_scale {scale:.4f} is not right yet; "
                                 f"substitute x_1 into x_2 and collect the x0 terms")
        if abs(std - (beta_1 + beta_2) ** 0.5) < 1e-6:
            raise AssertionError("noise_std: the first step's noise passes through the second step too, so it is "
                                 "shrunk by sqrt(1 - beta_2) like the signal")
        if abs(std - (((1 - beta_2) * beta_1) ** 0.5 + beta_2**0.5)) < 1e-6:
            raise AssertionError("noise_std: independent Gaussian noises add their *variances*, not their "
                                 "standard deviations")
        if abs(std - (1 - keep) ** 0.5) > 1e-6:
            raise AssertionError(f"betas {beta_1}, {beta_2}: noise_std {std:.4f} is not right yet; add the "
                                 f"variances of the two noise terms")
    print("✓ two steps are one step with alpha_bar = (1 - beta_1)(1 - beta_2): signal and noise variances add to 1")


def check_alphas_cumprod(fn: Callable) -> None:
    """Chapter 1: `fn(betas)` must return alpha_bar_t = prod_{s<=t} (1 - beta_s) for every t."""
    for name in SCHEDULES:
        s = NoiseSchedule.from_name(name)
        _close(fn(s.betas.clone()), s.alphas_cumprod, f"schedule {name!r}",
               "alpha_t = 1 - beta_t, and alpha_bar_t multiplies alpha_s for s = 0..t (torch.cumprod).", atol=1e-6)
    print("✓ alphas_cumprod is right for all three schedules")


def check_first_t(answer: int, schedule: NoiseSchedule, snr_below: float) -> None:
    """Chapter 1: `answer` must be the first t whose SNR is below `snr_below`."""
    snr = schedule.snr(torch.arange(schedule.num_train_timesteps))
    want = int(torch.nonzero(snr < snr_below)[0])
    if not isinstance(answer, int) or isinstance(answer, bool):
        raise AssertionError(f"expected an int timestep, got {type(answer).__name__}")
    if answer != want:
        side = "too late" if answer > want else "too early"
        raise AssertionError(f"t={answer} is {side}: SNR there is {float(snr[answer]):.3g}. "
                             "Look for the first index where schedule.snr(t) < the threshold.")
    print(f"✓ the {schedule.name} schedule's SNR first drops below {snr_below} at t={answer}")


def _one_ddim_step(x_t, eps, t: int, t_prev: int, schedule: NoiseSchedule):
    """The library's DDIM step from t to t_prev with a model that always answers `eps`: (x_prev, predicted x0)."""
    from .samplers import ddim  # samplers sit above schedules; import here so chapter 1 needs only schedules

    records = []
    ddim(lambda x, t_batch: eps, x_t, schedule, [t, t_prev], callback=records.append)
    return records[0].x_t, records[0].x0


def _ddim_cases():
    g = torch.Generator().manual_seed(1)
    schedule = NoiseSchedule.linear()
    for t, t_prev in ((999, 949), (500, 450), (100, 0)):
        x_t, eps = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
        yield schedule, t, t_prev, x_t, eps


def check_predict_x0(fn: Callable) -> None:
    """Chapter 2: `fn(x_t, eps, alpha_bar_t)` must invert the closed form: x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab)."""
    for schedule, t, t_prev, x_t, eps in _ddim_cases():
        _, want = _one_ddim_step(x_t, eps, t, t_prev, schedule)
        _close(fn(x_t, eps, schedule.alphas_cumprod[t]), want, f"t={t}",
               "Solve x_t = sqrt(ab) x0 + sqrt(1 - ab) eps for x0.", atol=1e-4)
    print("✓ predicted x0 is right")


def check_ddim_step(fn: Callable) -> None:
    """Chapter 2: `fn(x_t, eps, alpha_bar_t, alpha_bar_prev)` must be one deterministic DDIM step (eta = 0)."""
    for schedule, t, t_prev, x_t, eps in _ddim_cases():
        want, _ = _one_ddim_step(x_t, eps, t, t_prev, schedule)
        ab, ab_prev = schedule.alphas_cumprod[t], schedule.alphas_cumprod[t_prev]
        _close(fn(x_t, eps, ab, ab_prev), want, f"t={t} -> {t_prev}",
               "Predict x0 first, then re-noise it to the *previous* level with the *same* eps.", atol=1e-4)
    print("✓ the DDIM step is right")


# ----- chapter 5: CLIP ---------------------------------------------------------------------------------------

def _clip_cases():
    """Raw (unnormalised) image / text features of very different lengths, and logit scales s = e^t."""
    g = torch.Generator().manual_seed(5)
    for batch, dim, scale in ((8, 16, 14.3), (5, 4, 100.0), (12, 32, 3.0)):
        norms = torch.rand(batch, 1, generator=g) * 4 + 0.2  # lengths 0.2..4.2: normalising matters
        image = torch.randn(batch, dim, generator=g) * norms
        text = torch.randn(batch, dim, generator=g) * norms.flip(0)
        text[0] = text[0] + 2 * image[0]  # some structure, so logits are neither symmetric nor flat
        yield image, text, torch.tensor(scale)


def _diagnose(got, variants, fallback: str, atol: float = 1e-5, relative: bool = False) -> str:
    """The hint of the first known wrong variant `got` matches, else `fallback`. variants: {hint: value} or
    (hint, value) pairs; relative=True compares within `_tolerance`, as `_close` does."""
    pairs = variants.items() if isinstance(variants, dict) else variants
    for hint, value in pairs:
        if not isinstance(got, torch.Tensor) or got.shape != value.shape:
            continue
        if relative:
            if (got.double() - value.double()).abs().max().item() <= _tolerance(value, atol, True):
                return hint
        elif torch.allclose(got.double(), value.double(), atol=atol):
            return hint
    return fallback


def check_clip_loss(fn: Callable) -> None:
    """Chapter 5: `fn(image_features, text_features, logit_scale)` must be CLIP's symmetric InfoNCE loss.

    The features are raw (not yet normalised) and `logit_scale` is the multiplier s; the reference is open_clip's
    `ClipLoss` on the normalised features.
    """
    import torch.nn.functional as F
    from open_clip.loss import ClipLoss

    for image, text, scale in _clip_cases():
        img, txt = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        want = ClipLoss()(img, txt, scale)
        labels = torch.arange(len(image))
        logits = scale * img @ txt.T
        variants = {
            "Only one direction: average the image->text and the text->image cross-entropies (logits and logits.T).":
                F.cross_entropy(logits, labels),
            "Normalise both feature sets to unit length first (F.normalize(x, dim=-1)): CLIP compares directions.":
                (F.cross_entropy(scale * image @ text.T, labels) + F.cross_entropy(scale * text @ image.T, labels)) / 2,
            "The scale multiplies the cosine similarities as it is: logit_scale is already s = e^t, don't exp it.":
                (F.cross_entropy(scale.exp() * logits / scale, labels)
                 + F.cross_entropy(scale.exp() * logits.T / scale, labels)) / 2,
            "Multiply the cosine similarities by logit_scale (don't divide by it, don't leave it out).":
                (F.cross_entropy(logits / scale**2, labels) + F.cross_entropy(logits.T / scale**2, labels)) / 2,
            "Leave the scale in: without it the logits stay in [-1, 1] and the softmax is nearly flat.":
                (F.cross_entropy(logits / scale, labels) + F.cross_entropy(logits.T / scale, labels)) / 2,
            "The two cross-entropies are averaged, not added.":
                F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels),
        }
        got = fn(image.clone(), text.clone(), scale.clone())
        hint = _diagnose(got, variants, "logits = s * norm(img) @ norm(txt).T; the right pair is on the diagonal; "
                                        "loss = (CE(logits, I) + CE(logits.T, I)) / 2.")
        _close(got, want, f"batch of {len(image)}, s={scale.item():g}", hint, atol=1e-5)
    print("✓ your loss equals open_clip's ClipLoss")


def check_zero_shot_probs(fn: Callable) -> None:
    """Chapter 5: `fn(image_features, text_features, logit_scale)` -> (N images, V prompts) probabilities.

    p(prompt v | image n) = softmax over v of s * cos(image_n, text_v): CLIP zero-shot classification.
    """
    import torch.nn.functional as F

    for image, text, scale in _clip_cases():
        text = text[:3]  # fewer prompts than images: a transposed answer has the wrong shape
        img, txt = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        cos = img @ txt.T  # (N, V)
        want = (scale * cos).softmax(dim=1)
        variants = {
            "Each *image* picks among the prompts: the softmax runs over the prompts (dim=1), so every row sums to 1.":
                (scale * cos).softmax(dim=0),
            "Normalise both feature sets to unit length first (F.normalize(x, dim=-1)).":
                (scale * image @ text.T).softmax(dim=1),
            "Multiply the cosine similarities by logit_scale before the softmax: it sets how peaked it is.":
                cos.softmax(dim=1),
            "logit_scale is already s = e^t: multiply by it as it is.":
                (scale.exp() * cos).softmax(dim=1),
        }
        got = fn(image.clone(), text.clone(), scale.clone())
        hint = _diagnose(got, variants, "p = softmax(s * norm(img) @ norm(txt).T, dim=1), shape (N images, V prompts).")
        _close(got, want, f"{len(image)} images, {len(text)} prompts, s={scale.item():g}", hint, atol=1e-5)
    print("✓ zero-shot probabilities are right")


def check_recall_at_k(fn: Callable) -> None:
    """Chapter 5: `fn(similarity, k)` with similarity (N images, N captions), caption j describing image j, must
    return the fraction of captions whose own image is among the k images most similar to it (text -> image)."""
    g = torch.Generator().manual_seed(6)
    sims = torch.randn(40, 40, generator=g)
    sims += 1.5 * torch.eye(40) + 1.5 * torch.randn(40, 1, generator=g)  # some images are similar to everything
    for k in (1, 3, 5, 10):
        want = (sims.topk(k, dim=0).indices == torch.arange(40)).any(dim=0).float().mean().item()
        variants = {
            "For each *caption* (a column), rank the images (dim=0): this is text -> image retrieval.":
                (sims.topk(k, dim=1).indices == torch.arange(40)[:, None]).any(dim=1).float().mean().item(),
            "Top-k means the k best images, no more and no fewer (check k = 1: it is top-1 retrieval).":
                (sims.topk(k + 1, dim=0).indices == torch.arange(40)).any(dim=0).float().mean().item(),
            "The k best are the k *largest* similarities.":
                (sims.topk(k, dim=0, largest=False).indices == torch.arange(40)).any(dim=0).float().mean().item(),
        }
        got = fn(sims.clone(), k)
        got = got.item() if isinstance(got, torch.Tensor) and got.numel() == 1 else got
        if not isinstance(got, (float, int)) or isinstance(got, bool):
            raise AssertionError(f"k={k}: expected a number (a fraction between 0 and 1), got {type(got).__name__}")
        if abs(got - want) > 1e-6:
            hint = next((h for h, v in variants.items() if abs(got - v) <= 1e-6 and abs(v - want) > 1e-6),
                        "Column j holds caption j's similarity to every image; count the columns whose diagonal "
                        "entry is among their k largest, divide by N.")
            raise AssertionError(f"k={k}: got {got:.4f}, expected {want:.4f}. {hint}")
    print("✓ recall@k is right")


# ----- chapter 7: samplers as ODE solvers --------------------------------------------------------------------

DATA_STD = 0.5  # the checks' data: N(0, 0.5^2) per pixel, whose exact denoiser is known in closed form


def _gaussian_denoise(x: torch.Tensor, sigma) -> torch.Tensor:
    """The exact x0 = E[x0 | x] for N(0, s^2) data seen as x = x0 + sigma eps: x * s^2 / (s^2 + sigma^2)."""
    return x * DATA_STD**2 / (DATA_STD**2 + sigma**2)


def _gaussian_eps_model(schedule: NoiseSchedule) -> Callable:
    """The same exact denoiser as an eps-model on x_t's own scale, for course_lib's samplers."""
    def eps_model(x_t, t):
        a = schedule.alphas_cumprod[t.long().cpu()].view(-1, *[1] * (x_t.ndim - 1)).to(x_t)  # (B, 1, 1, 1)
        return (1 - a).sqrt() * x_t / (a * DATA_STD**2 + 1 - a)
    return eps_model


def _one_sampler_step(sampler, schedule: NoiseSchedule, x: torch.Tensor, t: int, t_next: int | None):
    """Where course_lib's sampler takes the sigma-space sample x at timestep t: to t_next, or to clean data (None)."""
    from .samplers import SAMPLERS  # (exercises sit above every layer; imported here to keep import time small)
    from .schedules import from_sigma_space, to_sigma_space

    sigmas = schedule.sigmas
    records = []
    SAMPLERS[sampler](_gaussian_eps_model(schedule), from_sigma_space(x, sigmas[t]), schedule,
                      [t] if t_next is None else [t, t_next], callback=records.append)
    return records[0].x_t if t_next is None else to_sigma_space(records[0].x_t, sigmas[t_next])


def _sigma_cases():
    schedule = NoiseSchedule.linear()
    g = torch.Generator().manual_seed(7)
    for t, t_next in ((999, 666), (500, 300), (120, 40), (40, 0)):
        x = DATA_STD * torch.randn(2, 3, 4, 4, generator=g) + schedule.sigmas[t] * torch.randn(2, 3, 4, 4, generator=g)
        yield schedule, t, t_next, x


def check_euler_step(fn: Callable) -> None:
    """Chapter 7: `fn(x, x0, sigma, sigma_next)` must take one Euler step of dx/dsigma = (x - x0) / sigma."""
    for schedule, t, t_next, x in _sigma_cases():
        sigma, sigma_next = schedule.sigmas[t], schedule.sigmas[t_next]
        x0 = _gaussian_denoise(x, sigma)
        want = _one_sampler_step("euler", schedule, x, t, t_next)
        got = fn(x, x0, sigma, sigma_next)
        wrong_sign = x + (sigma - sigma_next) * (x - x0) / sigma
        if isinstance(got, torch.Tensor) and got.shape == x.shape and torch.allclose(got, wrong_sign, atol=1e-5):
            raise AssertionError("the step goes the wrong way: sigma DEcreases, so multiply the slope by "
                                 "(sigma_next - sigma), a negative number")
        _close(got, want, f"sigma {sigma:.3g} -> {sigma_next:.3g}",
               "slope d = (x - x0) / sigma (it is the predicted noise), then x + d * (sigma_next - sigma)",
               atol=1e-4 * max(1.0, float(sigma)))
    print("✓ the Euler step is right")


def check_heun_step(fn: Callable) -> None:
    """Chapter 7: `fn(denoise, x, sigma, sigma_next)` must take one Heun step, calling denoise(x, sigma) -> x0
    twice (once where the step starts, once where Euler lands), and only once when sigma_next is 0."""
    cases = [(schedule, t, t_next, x) for schedule, t, t_next, x in _sigma_cases()]
    schedule, t, _, x = cases[1]
    cases.append((schedule, t, None, x))  # the last step, down to sigma = 0
    for schedule, t, t_next, x in cases:
        sigma = schedule.sigmas[t]
        sigma_next = torch.tensor(0.0) if t_next is None else schedule.sigmas[t_next]
        calls = []

        def denoise(x_in, s):
            calls.append(float(s))
            return _gaussian_denoise(x_in, s)

        got = fn(denoise, x, sigma, sigma_next)
        euler = x + (sigma_next - sigma) * (x - _gaussian_denoise(x, sigma)) / sigma
        if t_next is None:
            if len(calls) != 1:
                raise AssertionError(f"at sigma_next = 0 call denoise once (you called it {len(calls)} times): the "
                                     "slope (x - x0) / sigma_next has no value there, so the last step stays Euler")
            _close(got, euler, "the last step (sigma_next = 0)", "return the Euler step unchanged")
            continue
        if isinstance(got, torch.Tensor) and got.shape == x.shape and torch.allclose(got, euler, atol=1e-5):
            raise AssertionError("that is the Euler step: now evaluate the slope where it lands and average the two")
        if len(calls) != 2 or calls[1] != float(sigma_next):
            raise AssertionError(f"call denoise twice, at sigma then at sigma_next (you called it at {calls})")
        _close(got, _one_sampler_step("heun", schedule, x, t, t_next), f"sigma {sigma:.3g} -> {sigma_next:.3g}",
               "x + (d + d_next) / 2 * (sigma_next - sigma), with d_next the slope at the Euler point x_euler",
               atol=1e-4 * max(1.0, float(sigma)))
    print("✓ the Heun step is right")


#################################################################################
#                         Chapter 6: the Diffusion Transformer                  #
#################################################################################

def check_patchify(fn: Callable) -> None:
    """Chapter 6: `fn(x, p)` must cut (B, C, H, W) images into (B, T, p*p*C) tokens, patches in raster order
    (left to right, then top to bottom), each patch's numbers row by row with the C channels of a pixel together."""
    from .models.dit import patchify

    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for p in (2, 4):
        want = patchify(x, p)
        got = fn(x, p)
        if isinstance(got, torch.Tensor) and got.shape == want.shape and not torch.allclose(got, want):
            # (B, C, H/p, W/p, p, p) -> (B, T, C, p, p) -> (B, T, C*p*p): each patch channel by channel
            by_channel = x.unfold(2, p, p).unfold(3, p, p).flatten(2, 3).permute(0, 2, 1, 3, 4).flatten(2)
            if torch.allclose(got, by_channel):
                raise AssertionError("the patches are right but each one lists channel 0 first, then channel 1, "
                                     "...: DiT keeps the C numbers of one pixel together (channels last)")
        _close(got, want, f"patch size {p}",
               "reshape to (B, C, H/p, p, W/p, p), move the axes to (B, H/p, W/p, p, p, C), then flatten to "
               "(B, T, p*p*C)")
    print("✓ patchify is right")


def check_modulate(fn: Callable) -> None:
    """Chapter 6: `fn(x, shift, scale)` must return adaLN's x * (1 + scale) + shift for (B, T, d) tokens and
    (B, d) shift and scale."""
    g = torch.Generator().manual_seed(0)
    x, shift, scale = torch.randn(2, 5, 4, generator=g), torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    got = fn(x, shift, scale)
    no_one = x * scale[:, None] + shift[:, None]
    if isinstance(got, torch.Tensor) and got.shape == x.shape and torch.allclose(got, no_one):
        raise AssertionError("x * scale + shift zeroes the tokens when scale = 0; adaLN-Zero starts its scale at 0 "
                             "and must then leave x as it is: multiply by (1 + scale)")
    _close(got, x * (1 + scale[:, None]) + shift[:, None], "modulate",
           "shift and scale are (B, d): give them a token axis, shift[:, None, :], to broadcast over the T tokens")
    print("✓ modulate is right")


def check_dit_gflops(answer: float, depth: int, width: int, image_size: int, patch_size: int) -> None:
    """Chapter 6: `answer` must be a DiT's forward GFLOPs (one image) from N T (12 d^2 + 2 T d) multiply-adds,
    2 FLOPs each, within 1%."""
    if isinstance(answer, bool) or not isinstance(answer, (int, float)):
        raise AssertionError(f"expected a number of GFLOPs, got {type(answer).__name__}")
    T = (image_size // patch_size) ** 2
    want = 2 * depth * T * (12 * width**2 + 2 * T * width) / 1e9
    if math.isclose(answer, want / 2, rel_tol=0.01):
        raise AssertionError("that is the multiply-add count: each multiply-add is 2 FLOPs")
    if math.isclose(answer, 2 * depth * T * 12 * width**2 / 1e9, rel_tol=0.005):
        raise AssertionError("the attention products are missing: Q K^T and softmax(.) V cost 2 T d per token")
    if math.isclose(answer, 2 * depth * T * (12 * width**2 + T * width) / 1e9, rel_tol=0.005):
        raise AssertionError("attention is two products, Q K^T and softmax(.) V: T d multiply-adds each per token")
    if math.isclose(answer, 2 * depth * (image_size // patch_size) * (12 * width**2 + 2 * T * width) / 1e9,
                    rel_tol=0.01):
        raise AssertionError("T counts patches in the whole image: (image_size / patch_size) squared")
    if not math.isclose(answer, want, rel_tol=0.01):
        raise AssertionError(f"{answer:.4g} GFLOPs is off by {100 * (answer / want - 1):+.0f}%. T = (H / p)^2 "
                             f"tokens; N blocks each cost T (12 d^2 + 2 T d) multiply-adds")
    print(f"✓ {answer:.3f} GFLOPs")
