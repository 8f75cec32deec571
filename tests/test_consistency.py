"""Latent consistency distillation: the guidance-distilled U-Net, the objective (against diffusers' LCM pieces
written out by hand), the one-pass guidance of a student, and training it through the one loop."""
import copy

import pytest
import torch
from diffusers import LCMScheduler

from course_lib.guidance import GuidedModel
from course_lib.losses import ConsistencyDistillationLoss
from course_lib.models import unet_tiny
from course_lib.schedules import NoiseSchedule
from course_lib.training import TrainConfig, train

COND_DIM, L = 8, 3


def tiny(guidance_embed=False, seed=0):
    torch.manual_seed(seed)
    model = unet_tiny(cond_dim=COND_DIM, guidance_embed=guidance_embed, image_size=8, attn_resolutions=(4,))
    with torch.no_grad():  # zero-initialised output layers would make every eps 0: perturb everything
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def batch(B=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(B, 3, 8, 8, generator=g) * 2 - 1
    return x0, torch.randn(B, L, COND_DIM, generator=g), torch.ones(B, L, dtype=torch.bool)


def empty():
    return torch.zeros(L, COND_DIM), torch.tensor([True, False, False])


def test_student_starts_as_its_teacher_and_then_listens_to_w():
    teacher = tiny()
    student = unet_tiny(cond_dim=COND_DIM, guidance_embed=True, image_size=8, attn_resolutions=(4,))
    missing = student.load_state_dict(teacher.state_dict(), strict=False).missing_keys
    assert missing == ["guidance_proj.weight", "guidance_proj.bias"]  # the only new layer, zero-initialised
    student.eval()
    x, cond, mask = batch()
    t = torch.tensor([999, 500, 20, 0])
    for w in (0.0, 4.0):
        torch.testing.assert_close(student(x, t, cond, mask, w=w), teacher(x, t, cond, mask))
    with torch.no_grad():
        student.guidance_proj.weight.normal_()
    assert not torch.allclose(student(x, t, cond, mask, w=1.0), student(x, t, cond, mask, w=4.0))
    assert torch.equal(student(x, t, cond, mask, w=4.0), student(x, t, cond, mask, w=torch.full((4,), 4.0)))


def test_w_must_match_the_model():
    x, cond, mask = batch()
    with pytest.raises(ValueError, match="guidance-distilled .* pass the guidance weight"):
        tiny(guidance_embed=True)(x, 10, cond, mask)
    with pytest.raises(ValueError, match="takes no guidance weight w"):
        tiny()(x, 10, cond, mask, w=3.0)


def test_guided_model_runs_a_student_once_with_w_equal_scale_minus_one():
    student, calls = tiny(guidance_embed=True), []
    forward = student.forward

    def spy(x_t, t, cond=None, cond_mask=None, w=None):
        calls.append((x_t.shape[0], w))
        return forward(x_t, t, cond, cond_mask, w=w)

    student.forward = spy
    x, cond, mask = batch()
    eps = GuidedModel(student, cond[:1], mask[:1], *empty(), guidance_scale=5.0)(x, torch.full((4,), 300))
    assert calls == [(4, 4.0)]  # one pass of B images (CFG would run 2B), the weight w = 5 - 1
    torch.testing.assert_close(eps, forward(x, 300, cond[:1].expand(4, -1, -1), mask[:1].expand(4, -1), w=4.0))


def reference_loss(student, target, teacher, schedule, x0, cond, mask, generator, c=0.03):
    """Luo et al. 2023, Algorithm 1, spelled out with diffusers' LCM boundary scalings and a hand DDIM step."""
    scheduler = LCMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, timestep_scaling=10.0)
    B = x0.shape[0]
    index = torch.randint(0, 50, (B,), generator=generator)
    t = (index + 1) * 20 - 1
    t_prev = (t - 20).clamp(min=0)
    w = 1.0 + 6.0 * torch.rand(B, generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    ac = scheduler.alphas_cumprod
    a, a_prev = ac[t].view(-1, 1, 1, 1), ac[t_prev].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise

    def f(model, x, s, alpha_bar):
        c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(s)
        x0_pred = (x - (1 - alpha_bar).sqrt() * model(x, s, cond, mask, w=w)) / alpha_bar.sqrt()
        return c_skip.view(-1, 1, 1, 1) * x + c_out.view(-1, 1, 1, 1) * x0_pred

    with torch.no_grad():
        e_cond = teacher(x_t, t, cond, mask)
        e_uncond = teacher(x_t, t, empty()[0].expand(B, L, COND_DIM), empty()[1].expand(B, L))
        e = e_cond + w.view(-1, 1, 1, 1) * (e_cond - e_uncond)  # (1 + w) cond - w uncond
        x_prev = a_prev.sqrt() * (x_t - (1 - a).sqrt() * e) / a.sqrt() + (1 - a_prev).sqrt() * e
        goal = f(target, x_prev, t_prev, a_prev)
    diff2 = (f(student, x_t, t, a) - goal) ** 2
    return (torch.sqrt(diff2 + c**2) - c).mean()


def test_objective_equals_algorithm_1_written_out():
    schedule = NoiseSchedule.linear()
    teacher, student, target = tiny(), tiny(True, seed=1), tiny(True, seed=2)
    x0, cond, mask = batch()
    loss_fn = ConsistencyDistillationLoss(schedule, teacher, empty())
    ours = loss_fn(student, (x0, cond, mask), torch.Generator().manual_seed(3), ema=target)
    ref = reference_loss(student, target, teacher, schedule, x0, cond, mask, torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)
    # the gradient reaches the student only: teacher and target are constants of the loss
    ours.backward()
    assert all(p.grad is None for p in list(teacher.parameters()) + list(target.parameters()))
    assert student.conv_out.weight.grad.abs().sum() > 0
    l2 = ConsistencyDistillationLoss(schedule, teacher, empty(), huber_c=None)
    assert l2(student, (x0, cond, mask), torch.Generator().manual_seed(3), ema=target) > ours  # |d| < 1: d^2 > huber


def test_objective_errors():
    schedule = NoiseSchedule.linear()
    with pytest.raises(ValueError, match="skip must divide"):
        ConsistencyDistillationLoss(schedule, tiny(), empty(), skip=30)
    with pytest.raises(ValueError, match="w_min <= w_max"):
        ConsistencyDistillationLoss(schedule, tiny(), empty(), w_min=5, w_max=2)
    loss_fn = ConsistencyDistillationLoss(schedule, tiny(), empty())
    with pytest.raises(ValueError, match="ema_decay"):
        loss_fn(tiny(True), batch(), torch.Generator())


def test_distillation_trains_through_the_one_loop_against_its_ema():
    schedule = NoiseSchedule.linear()
    teacher = tiny()
    student = unet_tiny(cond_dim=COND_DIM, guidance_embed=True, image_size=8, attn_resolutions=(4,))
    student.load_state_dict(teacher.state_dict(), strict=False)
    before = copy.deepcopy(teacher.state_dict())
    x0, cond, mask = batch(B=16)
    config = TrainConfig(steps=6, batch_size=8, lr=1e-3, warmup=0, ema_decay=0.95, seed=0, ckpt_every=0)
    result = train(student, ConsistencyDistillationLoss(schedule, teacher, empty()), (x0, cond, mask), config,
                   progress=False)
    assert len(result.history) == 6 and all(torch.isfinite(torch.tensor(result.history)))
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())  # the teacher stays frozen
    assert result.final is result.ema and not torch.equal(result.ema.guidance_proj.weight, student.guidance_proj.weight)
    with pytest.raises(ValueError, match="ema_decay"):
        train(copy.deepcopy(student), ConsistencyDistillationLoss(schedule, teacher, empty()), (x0, cond, mask),
              TrainConfig(steps=1, batch_size=8, ema_decay=None, ckpt_every=0), progress=False)
