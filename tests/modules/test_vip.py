import torch

from glimpseprune.modules import VIP, GlimpseToken
from glimpseprune.modules.vip import GridRoPE2D


def test_published_parameter_counts():
    """method.md §6.6: Qwen2.5-VL-7B VIP 9,454,081 and glimpse 12,952,576 parameters."""
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
