"""The notebooks' check cells must accept right answers and catch the typical wrong ones."""
import pytest
import torch

from course_lib.exercises import check_alphas_cumprod, check_first_t, check_two_steps
from course_lib.schedules import NoiseSchedule


def test_two_steps_checker_wants_the_derivation_and_names_the_usual_slips(capsys):
    check_two_steps(lambda b1, b2: (((1 - b1) * (1 - b2)) ** 0.5, (1 - (1 - b1) * (1 - b2)) ** 0.5))
    assert "✓" in capsys.readouterr().out
    right_scale = lambda b1, b2: ((1 - b1) * (1 - b2)) ** 0.5  # noqa: E731
    wrong = {
        "no square roots": (lambda b1, b2: ((1 - b1) * (1 - b2), 0.5), "square roots"),
        "first noise not shrunk": (lambda b1, b2: (right_scale(b1, b2), (b1 + b2) ** 0.5), "shrunk by sqrt"),
        "stds added": (lambda b1, b2: (right_scale(b1, b2), ((1 - b2) * b1) ** 0.5 + b2**0.5), "variances"),
        "scale only of the last step": (lambda b1, b2: ((1 - b2) ** 0.5, 0.5), "collect the x0 terms"),
        "one number": (lambda b1, b2: 0.5, "two numbers"),
    }
    for name, (fn, hint) in wrong.items():
        with pytest.raises(AssertionError, match=hint):
            check_two_steps(fn)


def test_alphas_cumprod_checker():
    check_alphas_cumprod(lambda betas: torch.cumprod(1 - betas, 0))
    for fn in (lambda b: torch.cumprod(b, 0), lambda b: 1 - b, lambda b: torch.cumsum(1 - b, 0),
               lambda b: torch.cumprod(1 - b, 0)[:-1]):
        with pytest.raises(AssertionError):
            check_alphas_cumprod(fn)


def test_first_t_checker():
    s = NoiseSchedule.cosine()
    right = int(torch.nonzero(s.snr(torch.arange(1000)) < 0.1)[0])
    check_first_t(right, s, 0.1)
    for wrong in (right - 1, right + 1, float(right), 0):
        with pytest.raises(AssertionError):
            check_first_t(wrong, s, 0.1)


def test_predict_x0_checker():
    from course_lib.exercises import check_predict_x0

    check_predict_x0(lambda x_t, eps, ab: (x_t - (1 - ab) ** 0.5 * eps) / ab**0.5)
    for fn in (lambda x_t, eps, ab: x_t - eps,
               lambda x_t, eps, ab: (x_t - (1 - ab) * eps) / ab,
               lambda x_t, eps, ab: (x_t + (1 - ab) ** 0.5 * eps) / ab**0.5):
        with pytest.raises(AssertionError):
            check_predict_x0(fn)


def test_ddim_step_checker():
    from course_lib.exercises import check_ddim_step

    def x0_of(x_t, eps, ab):
        return (x_t - (1 - ab) ** 0.5 * eps) / ab**0.5

    check_ddim_step(lambda x_t, eps, ab, ab_prev: ab_prev**0.5 * x0_of(x_t, eps, ab) + (1 - ab_prev) ** 0.5 * eps)
    wrong = (
        lambda x_t, eps, ab, ab_prev: ab**0.5 * x0_of(x_t, eps, ab) + (1 - ab) ** 0.5 * eps,  # stays at t
        lambda x_t, eps, ab, ab_prev: ab_prev**0.5 * x0_of(x_t, eps, ab),  # drops the eps direction
        lambda x_t, eps, ab, ab_prev: x_t - (1 - ab_prev) ** 0.5 * eps,  # ad-hoc subtraction
    )
    for fn in wrong:
        with pytest.raises(AssertionError):
            check_ddim_step(fn)


# ----- chapter 5: CLIP -----------------------------------------------------------------------------------------

def _clip_loss(image, text, scale, one_sided=False, normalise=True, scale_fn=lambda s: s, reduce=0.5):
    import torch.nn.functional as F

    if normalise:
        image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    logits = scale_fn(scale) * image @ text.T
    labels = torch.arange(len(image))
    if one_sided:
        return F.cross_entropy(logits, labels)
    return reduce * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def test_clip_loss_checker(capsys):
    from course_lib.exercises import check_clip_loss

    check_clip_loss(_clip_loss)
    assert "ClipLoss" in capsys.readouterr().out
    wrong = {
        "one direction": (lambda i, t, s: _clip_loss(i, t, s, one_sided=True), "one direction"),
        "text side only": (lambda i, t, s: _clip_loss(t, i, s, one_sided=True), "logits = s"),
        "no normalisation": (lambda i, t, s: _clip_loss(i, t, s, normalise=False), "Normalise"),
        "exp of the scale": (lambda i, t, s: _clip_loss(i, t, s, scale_fn=torch.exp), "don't exp"),
        "divides by the scale": (lambda i, t, s: _clip_loss(i, t, s, scale_fn=lambda s: 1 / s), "don't divide"),
        "no scale": (lambda i, t, s: _clip_loss(i, t, s, scale_fn=lambda s: 1.0), "Leave the scale in"),
        "sum of both": (lambda i, t, s: _clip_loss(i, t, s, reduce=1.0), "averaged"),
        "a float": (lambda i, t, s: 0.0, "torch.Tensor"),
    }
    for name, (fn, message) in wrong.items():
        with pytest.raises(AssertionError, match=message):
            check_clip_loss(fn)


def test_zero_shot_probs_checker():
    import torch.nn.functional as F
    from course_lib.exercises import check_zero_shot_probs

    def probs(i, t, s, dim=1, normalise=True, scale_fn=lambda s: s):
        if normalise:
            i, t = F.normalize(i, dim=-1), F.normalize(t, dim=-1)
        return (scale_fn(s) * i @ t.T).softmax(dim=dim)

    check_zero_shot_probs(probs)
    wrong = {
        "softmax over images": (lambda i, t, s: probs(i, t, s, dim=0), "dim=1"),
        "no normalisation": (lambda i, t, s: probs(i, t, s, normalise=False), "Normalise"),
        "no scale": (lambda i, t, s: probs(i, t, s, scale_fn=lambda s: 1.0), "Multiply"),
        "exp of the scale": (lambda i, t, s: probs(i, t, s, scale_fn=torch.exp), "already"),
        "transposed": (lambda i, t, s: probs(t, i, s), "shape"),
        "similarities, not probabilities": (lambda i, t, s: F.normalize(i, dim=-1) @ F.normalize(t, dim=-1).T, "off by"),
    }
    for name, (fn, message) in wrong.items():
        with pytest.raises(AssertionError, match=message):
            check_zero_shot_probs(fn)


def test_recall_at_k_checker():
    from course_lib.exercises import check_recall_at_k

    def recall(sims, k, dim=0, extra=0, largest=True):
        ranked = sims.topk(k + extra, dim=dim, largest=largest).indices
        own = torch.arange(len(sims))
        hits = (ranked == own).any(dim=0) if dim == 0 else (ranked == own[:, None]).any(dim=1)
        return hits.float().mean().item()

    check_recall_at_k(recall)
    check_recall_at_k(lambda sims, k: (sims.topk(k, dim=0).indices == torch.arange(len(sims))).any(0).float().mean())
    wrong = {
        "image -> text": (lambda s, k: recall(s, k, dim=1), "dim=0"),
        "k + 1": (lambda s, k: recall(s, k, extra=1), "no more"),
        "smallest": (lambda s, k: recall(s, k, largest=False), "largest"),
        "a count, not a fraction": (lambda s, k: recall(s, k) * len(s), "expected"),
        "a tensor of hits": (lambda s, k: (s.topk(k, dim=0).indices == torch.arange(len(s))).any(0), "a number"),
    }
    for name, (fn, message) in wrong.items():
        with pytest.raises(AssertionError, match=message):
            check_recall_at_k(fn)


# ----- chapter 7: samplers -------------------------------------------------------------------------------------

def _heun(denoise, x, s, s_next, at_landing=True, euler_last=True):
    d = (x - denoise(x, s)) / s
    x_euler = x + d * (s_next - s)
    if s_next == 0 and euler_last:
        return x_euler
    where = x_euler if at_landing else x
    d_next = (where - denoise(where, s_next)) / max(float(s_next), 1e-3)
    return x + (d + d_next) / 2 * (s_next - s)


def test_sampler_step_checks_accept_the_right_answers_and_reject_typical_mistakes():
    from course_lib.exercises import check_euler_step, check_heun_step

    check_euler_step(lambda x, x0, s, s_next: x + (s_next - s) * (x - x0) / s)
    wrong_euler = (
        lambda x, x0, s, s_next: x + (s - s_next) * (x - x0) / s,  # steps up in noise
        lambda x, x0, s, s_next: x + (s_next - s) * (x - x0),  # forgets to divide by sigma
        lambda x, x0, s, s_next: x0 + s_next * (x - x0),  # re-noises with the wrong scale
    )
    for fn in wrong_euler:
        with pytest.raises(AssertionError):
            check_euler_step(fn)
    check_heun_step(_heun)
    wrong_heun = (
        lambda dn, x, s, s_next: _heun(dn, x, s, s_next, at_landing=False),  # second slope at the start point
        lambda dn, x, s, s_next: _heun(dn, x, s, s_next, euler_last=False),  # a trapezoid into sigma = 0
        lambda dn, x, s, s_next: x + (s_next - s) * (x - dn(x, s)) / s,  # plain Euler
    )
    for fn in wrong_heun:
        with pytest.raises(AssertionError):
            check_heun_step(fn)


def test_dit_checks_accept_the_right_answers_and_reject_typical_mistakes():
    from course_lib.exercises import check_dit_gflops, check_modulate, check_patchify

    def right(x, p):
        B, C, H, W = x.shape
        return x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1).reshape(B, -1, p * p * C)

    check_patchify(right)
    wrong_patchify = (
        lambda x, p: x.reshape(x.shape[0], x.shape[1], x.shape[2] // p, p, x.shape[3] // p, p)
        .permute(0, 2, 4, 1, 3, 5).reshape(x.shape[0], -1, p * p * x.shape[1]),  # channels first inside a patch
        lambda x, p: right(x.transpose(2, 3), p),  # patches in column order
        lambda x, p: x.flatten(2).transpose(1, 2),  # pixels as tokens, ignoring p
    )
    for fn in wrong_patchify:
        with pytest.raises(AssertionError):
            check_patchify(fn)
    check_modulate(lambda x, shift, scale: x * (1 + scale[:, None]) + shift[:, None])
    for fn in (lambda x, shift, scale: x * scale[:, None] + shift[:, None],  # no "1 +": zero scale kills x
               lambda x, shift, scale: (x + shift[:, None]) * (1 + scale[:, None]),  # shifts before scaling
               lambda x, shift, scale: x * (1 + shift[:, None]) + scale[:, None]):  # shift and scale swapped
        with pytest.raises(AssertionError):
            check_modulate(fn)
    T = (32 // 2) ** 2  # DiT-B/2: 256 tokens, where attention is 5% of the work
    check_dit_gflops(2 * 12 * T * (12 * 768**2 + 2 * T * 768) / 1e9, 12, 768, 32, 2)
    for wrong in (12 * T * (12 * 768**2 + 2 * T * 768) / 1e9,  # multiply-adds, not FLOPs
                  2 * 12 * T * 12 * 768**2 / 1e9,  # no attention term
                  2 * 12 * T * (12 * 768**2 + T * 768) / 1e9,  # one attention product instead of two
                  2 * 12 * 16 * (12 * 768**2 + 2 * 256 * 768) / 1e9,  # T = H / p instead of (H / p)^2
                  2 * 12 * 64 * (12 * 768**2 + 2 * 64 * 768) / 1e9):  # patch 4's tokens
        with pytest.raises(AssertionError):
            check_dit_gflops(wrong, 12, 768, 32, 2)
    with pytest.raises(AssertionError, match="expected a number"):
        check_dit_gflops("12", 12, 768, 32, 4)


# ----- chapter 8 --------------------------------------------------------------------------------------------------
def test_causal_mask_check_accepts_the_answer_and_catches_the_usual_mistakes():
    from course_lib.exercises_ar import check_causal_mask

    check_causal_mask(lambda n: torch.ones(n, n, dtype=torch.bool).tril())
    with pytest.raises(AssertionError, match="tril, not triu"):
        check_causal_mask(lambda n: torch.ones(n, n, dtype=torch.bool).triu())
    with pytest.raises(AssertionError, match="diagonal"):
        check_causal_mask(lambda n: torch.ones(n, n, dtype=torch.bool).tril(-1))
    with pytest.raises(AssertionError, match="bool"):
        check_causal_mask(lambda n: torch.ones(n, n).tril())
    with pytest.raises(AssertionError, match="0..i"):
        check_causal_mask(lambda n: torch.ones(n, n, dtype=torch.bool))


def test_sequential_calls_check_catches_counting_guidance_twice():
    from course_lib.exercises_ar import check_sequential_calls

    right = {"pixel AR, 32x32": 1024, "token AR, 8x8 codes": 64, "diffusion, 20 steps": 20,
             "diffusion, 20 steps with CFG": 20}
    check_sequential_calls(right)
    with pytest.raises(AssertionError, match="batch of 2"):
        check_sequential_calls({**right, "diffusion, 20 steps with CFG": 40})
    with pytest.raises(AssertionError, match="per pixel"):
        check_sequential_calls({**right, "pixel AR, 32x32": 32})
    with pytest.raises(AssertionError, match="missing"):
        check_sequential_calls({"pixel AR, 32x32": 1024})
