"""The anatomy helper reports what a forward pass really does: blocks in call order, their shapes, their parameters."""
import pytest
import torch
import torch.nn as nn

from course_lib.metrics.anatomy import count_parameters, parameters_by_block, top_level_blocks, trace_blocks
from course_lib.models import unet_tiny


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return unet_tiny().eval()


def test_a_unet_trace_follows_the_down_path_the_middle_and_the_up_path(unet):
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 500])
    records = trace_blocks(unet, x, t)
    names = [r.name for r in records]
    assert names[:2] == ["time_embed", "conv_in"] and names[-2:] == ["norm_out", "conv_out"]
    downs, ups = [n for n in names if n.startswith("down.")], [n for n in names if n.startswith("up.")]
    assert downs == [f"down.{i}" for i in range(len(unet.down))] and ups == [f"up.{i}" for i in range(len(unet.up))]
    assert names.index(downs[-1]) < names.index("mid.0") < names.index("mid.1") < names.index(ups[0])
    by_name = {r.name: r for r in records}
    assert by_name["time_embed"].in_shape == (2,) and by_name["time_embed"].out_shape == (2, 4 * 16)
    assert by_name["conv_out"].out_shape == tuple(x.shape) == by_name["conv_in"].in_shape
    # the spatial size halves at each Downsample and doubles back at each Upsample
    assert [r.out_shape[-1] for r in records if r.kind.startswith("Downsample")] == [16, 8]
    assert [r.out_shape[-1] for r in records if r.kind.startswith("Upsample")] == [16, 32]
    # every up-path ResAttnBlock reads the previous output with a skip concatenated on the channels
    previous = None
    for r in records:
        if r.name.startswith("up.") and r.kind.startswith("ResAttnBlock"):
            assert r.in_shape[1] > previous.out_shape[1] and r.in_shape[2:] == previous.out_shape[2:]
        previous = r
    assert sum(r.kind.startswith("ResAttnBlock") and r.name.startswith("up.") for r in records) == \
        1 + sum(r.name.startswith("down.") for r in records)  # one skip per down-path output, plus conv_in's


def test_parameters_add_up_and_attention_shows_in_the_kind(unet):
    records = trace_blocks(unet, torch.randn(1, 3, 32, 32), torch.tensor([3]))
    assert sum(r.parameters for r in records) == count_parameters(unet)
    assert sum(parameters_by_block(unet).values()) == count_parameters(unet)
    assert set(parameters_by_block(unet)) == {"time_embed", "conv_in", "down", "mid", "up", "norm_out", "conv_out"}
    attention = {r.name for r in records if "SelfAttention" in r.kind}
    assert "mid.0" in attention and "mid.1" not in attention  # unet_tiny: attention at 8x8 and in the middle


def test_hooks_are_removed_and_the_output_is_unchanged(unet):
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([100])
    with torch.no_grad():
        before = unet(x, t)
    trace_blocks(unet, x, t)
    assert all(not m._forward_hooks for m in unet.modules())
    with torch.no_grad():
        assert torch.equal(unet(x, t), before)


def test_hooks_are_removed_even_when_the_forward_pass_fails(unet):
    with pytest.raises(ValueError):
        trace_blocks(unet, torch.randn(1, 3, 30, 30), torch.tensor([1]))  # 30 is not divisible by 4
    assert all(not m._forward_hooks for m in unet.modules())


def test_plain_sequential_a_block_called_twice_and_an_unused_one():
    lin = nn.Linear(4, 4)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.unused, self.head = lin, nn.Linear(4, 9), nn.Sequential(nn.ReLU(), nn.Linear(4, 2))

        def forward(self, x):
            return self.head(self.lin(self.lin(x)))

    records = trace_blocks(Twice(), torch.zeros(5, 4))
    assert [(r.name, r.in_shape, r.out_shape, r.parameters) for r in records] == \
        [("lin", (5, 4), (5, 4), 20), ("lin", (5, 4), (5, 4), 20), ("head", (5, 4), (5, 2), 10)]
    assert records[-1].kind == "Sequential(ReLU, Linear)"
    assert [name for name, _ in top_level_blocks(nn.Sequential(nn.ModuleList([nn.ReLU(), nn.Tanh()])))] == \
        ["0.0", "0.1"]
    with pytest.raises(ValueError, match="no blocks"):
        trace_blocks(nn.ReLU(), torch.zeros(1))

