import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from glimpseprune.modules import VIP, GlimpseToken
from glimpseprune.modules.vip import GridRoPE2D, attention_padded_value


def test_published_parameter_counts():
    """docs/method.md §6.6: Qwen2.5-VL-7B VIP 9,454,081 and glimpse 12,952,576 parameters."""
    vip = VIP(row_width=28, vision_size=1280)
    glimpse = GlimpseToken(3584, list(range(28)))
    assert sum(p.numel() for p in vip.parameters()) == 9_454_081
    assert sum(p.numel() for p in glimpse.parameters()) == 12_952_576
    assert len([k for k in vip.state_dict()]) == 60  # the reference's attn_fuser holds exactly 60 tensors


def test_rope_pairs_rotate_by_row_then_column():
    rope = GridRoPE2D(192)
    cos, sin = rope(3, 5, "cpu")
    angle = torch.atan2(sin, cos)
    # token (row 2, col 3) is index 13; dim 0 rotates by row*inv_freq[0] = 2, dim 48 by col*inv_freq[0] = 3
    assert torch.isclose(angle[13, 0], torch.tensor(2.0)) and torch.isclose(angle[13, 48], torch.tensor(3.0))
    assert torch.allclose(angle[13, :96], angle[13, 96:])  # phi = [theta, theta]
    assert torch.isclose(rope.inv_freq[1], torch.tensor(10000 ** (-2 / 96)))


def test_images_do_not_attend_to_each_other():
    torch.manual_seed(0)
    vip = VIP(row_width=4, vision_size=8, num_layers=2, size=32, cond_size=32, heads=2)
    rows_a, rows_b = torch.randn(6, 4), torch.randn(12, 4)
    conds_a, conds_b = [torch.randn(6, 8) for _ in range(2)], [torch.randn(12, 8) for _ in range(2)]
    alone = vip(rows_a, conds_a, [(2, 3)])
    together = vip(torch.cat([rows_a, rows_b]), [torch.cat(x) for x in zip(conds_a, conds_b)], [(2, 3), (3, 4)])
    torch.testing.assert_close(together[:6], alone, atol=1e-6, rtol=1e-5)
    # same-size images are batched in one call: still independent
    twice = vip(torch.cat([rows_a, rows_a * 2]), [torch.cat([c, c]) for c in conds_a], [(2, 3), (2, 3)])
    torch.testing.assert_close(twice[:6], alone, atol=1e-6, rtol=1e-5)


def test_glimpse_vectors_use_shared_projection_and_norm():
    g = GlimpseToken(16, [0, 1, 2])
    vecs = g.vectors(2, torch.float32)
    assert sorted(vecs) == [0, 1]
    u = g.norm(g.proj(g.embeddings[1]))
    torch.testing.assert_close(vecs[1], u)
    rms = vecs[0].pow(2).mean().sqrt()
    assert torch.isclose(rms, torch.tensor(1.0), atol=1e-2)  # unit RMS up to the eps (inputs are ~0.05 in size)


def _reference_vip(vip: VIP, rows, conds, grid):
    """The VIP of one image written out by hand in float64: explicit softmax(q·kᵀ/√d_qk)·v per head, no SDPA."""
    import math

    h, w = grid
    cos, sin = (t.double() for t in vip.rope(h, w, "cpu"))
    x = vip.in_proj.double()(rows.double())
    for proj, block, cond in zip(vip.cond_projs, vip.blocks, conds):
        proj, block = proj.double(), block.double()
        attn = block.attn
        y = block.norm1(x)
        xc = torch.cat([y, proj(cond.double())], dim=-1)
        n = x.shape[0]
        q = attn.q_proj(xc).view(n, attn.heads, -1).transpose(0, 1)
        k = attn.k_proj(xc).view(n, attn.heads, -1).transpose(0, 1)
        v = attn.v_proj(y).view(n, attn.heads, -1).transpose(0, 1)
        q = q * cos + torch.cat([-q[..., q.shape[-1] // 2 :], q[..., : q.shape[-1] // 2]], -1) * sin
        k = k * cos + torch.cat([-k[..., k.shape[-1] // 2 :], k[..., : k.shape[-1] // 2]], -1) * sin
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        x = x + attn.o_proj((probs @ v).transpose(0, 1).reshape(n, -1))
        x = x + block.mlp(block.norm2(x))
    return vip.out_proj.double()(x).squeeze(-1)


def test_vip_equals_hand_written_attention():
    """Q/K heads wider than V heads (the published 192 vs 64 shape, scaled down): same logits as the explicit math."""
    torch.manual_seed(0)
    vip = VIP(row_width=4, vision_size=8, num_layers=2, size=16, cond_size=32, heads=2)
    assert (16 + 32) // 2 != 16 // 2  # unequal head widths: the padded-V path is the one under test
    rows, conds = torch.randn(12, 4), [torch.randn(12, 8) for _ in range(2)]
    expected = _reference_vip(vip, rows, conds, (3, 4))
    got = vip.float()(rows, conds, [(3, 4)])
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


def test_padded_value_attention_is_sdpa_on_the_unpadded_value():
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 3, 7, 12), torch.randn(2, 3, 7, 12), torch.randn(2, 3, 7, 4)
    expected = torch.softmax(q.double() @ k.double().transpose(-1, -2) / 12**0.5, -1) @ v.double()
    torch.testing.assert_close(attention_padded_value(q, k, v).double(), expected, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="exceeds"):
        attention_padded_value(q, k, torch.randn(2, 3, 7, 13))


class _LargestOutput(TorchDispatchMode):
    """Records the largest tensor any aten op returns (what a materialised score map would show up as)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("requires_grad", [False, True])
def test_vip_never_materialises_a_token_by_token_map(requires_grad):
    """Published widths (F=256, C=512, 4 heads: Q/K heads 192 wide, V heads 64) at N = 32·32 = 1,024 tokens: no op
    output reaches N² elements (one head of the math fallback's score map), in inference and in training."""
    torch.manual_seed(0)
    vip = VIP(row_width=4, vision_size=16, num_layers=1)
    n = 32 * 32
    rows = torch.randn(n, 4, requires_grad=requires_grad)
    conds = [torch.randn(n, 16)]
    with torch.set_grad_enabled(requires_grad), _LargestOutput() as probe:
        out = vip(rows, conds, [(32, 32)])
        if requires_grad:
            out.sum().backward()
    assert probe.largest < n * n  # one head's map: N² = 1,048,576 (the largest weight, 768², is smaller)
    assert probe.largest >= n * 512  # sanity: the probe did see the [N, C] condition features


def test_vip_flops_match_torch_flop_counter():
    """``flops.vip_flops`` counts what the module executes: torch's own counter, three images (two of equal grid,
    batched into one attention call), every matrix product included."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    from glimpseprune.flops import VIPDims, vip_flops

    torch.manual_seed(0)
    vip = VIP(row_width=6, vision_size=10, num_layers=3, size=16, cond_size=32, heads=2)
    grids = [(2, 3), (3, 4), (2, 3)]
    n = sum(h * w for h, w in grids)
    rows, conds = torch.randn(n, 6), [torch.randn(n, 10) for _ in range(3)]
    aten = torch.ops.aten
    # torch's table has no entry for the CPU flash kernel that SDPA picks here; count it with torch's own SDPA
    # formula (the one its table uses for the CUDA flash kernel).
    cpu_flash = {aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *_, **__: sdpa_flop_count(q, k, v)}
    with FlopCounterMode(display=False, custom_mapping=cpu_flash) as counter:
        vip(rows, conds, grids)
    counted = counter.get_total_flops()
    per_op = counter.get_flop_counts()["Global"]
    assert aten._scaled_dot_product_flash_attention_for_cpu in per_op  # the fused kernel ran (no bmm fallback)
    assert aten.bmm not in per_op
    dims = VIPDims(input_width=6, vision_width=10, size=16, cond_size=32, layers=3, heads=2)
    assert vip_flops(dims, [h * w for h, w in grids]) == counted
