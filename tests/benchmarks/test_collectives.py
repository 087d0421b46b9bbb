"""Collective accounting (experiments.benchmarks.collectives) on tiny models, 4 host devices.

References are independent of the HLO reader: parameter and BatchNorm-statistics bytes counted
from the variables, per-pixel bytes from the batch shape, and a hand-written HLO module whose
bytes are worked out by hand.
"""

import flax.linen as nn
import jax
import numpy as np
import pytest

from experiments.benchmarks import collectives, common
from segjax import ops
from segjax.models.norm import BatchNorm
from tests.train.tiny import make_task

K = 3  # classes
B = 2  # images per device
N = 4  # devices
H, W = 6, 5


class Net(nn.Module):
    """Two 3x3 conv blocks of different widths (4, 6), each with or without BatchNorm, then a
    1x1 head: two BN layers with different feature counts."""

    norm: bool = True
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i, width in enumerate((4, 6)):
            x = nn.Conv(width, (3, 3), use_bias=not self.norm, name=f"conv{i}")(x)
            if self.norm:
                x = BatchNorm(use_running_average=not train, axis_name=self.axis_name,
                              name=f"bn{i}")(x)
            x = nn.relu(x)
        return {"logits": nn.Conv(K, (1, 1), name="head")(x)}


class Residual(nn.Module):
    """conv-BN on the main path plus a 1x1 conv-BN shortcut, added: a ResNet downsampling block."""

    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        def bn(name):
            return BatchNorm(use_running_average=not train, axis_name=self.axis_name, name=name)

        main = bn("bn")(nn.Conv(5, (3, 3), use_bias=False, name="conv")(x))
        short = bn("down_bn")(nn.Conv(5, (1, 1), use_bias=False, name="down")(x))
        return {"logits": nn.Conv(K, (1, 1), name="head")(nn.relu(main + short))}


def _count(norm=True, parallelism="pmap", size=(H, W), task=None):
    return collectives.step_collectives(
        Net(norm=norm), per_device_batch=B, size=size[0], parallelism=parallelism,
        num_devices=N, num_classes=K, task=task)


@pytest.fixture(scope="module")
def counts():
    """Accountings shared by the tests (each is one compile)."""
    out = {(True, mode): _count(True, mode) for mode in ("pmap", "mesh")}
    out[(False, "pmap")] = _count(False, "pmap")
    return out


def _expected_bytes(variables_tree):
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(variables_tree))


def _scalar_bytes(acc):
    return sum(b.nbytes for op in acc.ops if op.kind == "all-reduce" for b in op.operands
               if b.shape == ())


def test_hlo_reader_on_a_hand_written_module():
    text = """
HloModule m
ENTRY %main (p0: f32[3,3,3,4], p1: f32[4], p2: bf16[8,16]) -> f32[] {
  %p0 = f32[3,3,3,4]{3,2,1,0} parameter(0)
  %p1 = f32[4]{0} parameter(1)
  %p2 = bf16[8,16]{1,0} parameter(2)
  %ar = (f32[3,3,3,4]{3,2,1,0}, f32[4]{0}) all-reduce(%p0, %p1), channel_id=1, replica_groups={{0,1,2,3}}, to_apply=%add, metadata={op_name="jit(f)/psum"}
  %ag = bf16[32,16]{1,0} all-gather(%p2), channel_id=2, replica_groups=[1,4]<=[4], dimensions={0}
  %ags = (bf16[8,16]{1,0}, bf16[32,16]{1,0}) all-gather-start(%p2), channel_id=3, replica_groups={{0,1,2,3}}, dimensions={0}
  %agd = bf16[32,16]{1,0} all-gather-done(%ags)
  %rs = f32[1]{0} reduce-scatter(%p1), channel_id=4, replica_groups={{0,1,2,3}}, dimensions={0}, to_apply=%add
  %cp = f32[4]{0} collective-permute(%p1), channel_id=5, source_target_pairs={{0,1},{1,2}}
  ROOT %r = f32[] constant(0)
}
"""
    ops = collectives.hlo_collectives(text)
    assert [o.kind for o in ops] == ["all-reduce", "all-gather", "all-gather", "reduce-scatter",
                                     "collective-permute"]
    ar, ag, ags, rs, cp = ops
    assert ar.operand_bytes == ar.result_bytes == 3 * 3 * 3 * 4 * 4 + 4 * 4
    assert len(ar.operands) == 2 and ar.group_size == 4 and ar.op_name == "jit(f)/psum"
    assert (ag.operand_bytes, ag.result_bytes, ag.group_size) == (8 * 16 * 2, 32 * 16 * 2, 4)
    assert (ags.operand_bytes, ags.result_bytes) == (8 * 16 * 2, 32 * 16 * 2)
    assert (rs.operand_bytes, rs.result_bytes) == (16, 4)
    assert cp.operand_bytes == 16


def test_gradient_all_reduce_is_the_parameter_bytes(counts):
    acc = counts[(False, "pmap")]  # no BatchNorm: gradients and the loss's two scalars only
    # (mesh: test_sync_batchnorm_adds_what_its_statistics_weigh accounts for every byte too)
    params = jax.eval_shape(Net(norm=False).init, jax.random.key(0),
                            np.zeros((1, H, W, 3), np.float32))["params"]
    assert acc.param_bytes == _expected_bytes(params) > 0
    kinds = acc.by_kind()
    assert {k for k, d in kinds.items() if d["count"]} == {"all-reduce"}
    assert _scalar_bytes(acc) == 2 * 4  # global loss sum and valid-pixel count, float32
    assert kinds["all-reduce"]["bytes"] == acc.param_bytes + 2 * 4
    split = acc.split_all_reduce()
    assert split["gradient_bytes"] == acc.param_bytes and split["unmatched_params"] == 0
    assert acc.total_bytes == kinds["all-reduce"]["bytes"]


@pytest.mark.parametrize("mode", ["pmap", "mesh"])
def test_sync_batchnorm_adds_what_its_statistics_weigh(counts, mode):
    with_bn, without = counts[(True, mode)], counts[(False, "pmap")]
    # Two BN layers of 4 and 6 float32 features: mean + var = 2 * (4 + 6) * 4 bytes.
    assert with_bn.batch_stats_bytes == 2 * (4 + 6) * 4
    # BN's own parameters (scale, bias) replace the conv biases: same count, so the gradient
    # bytes are equal; sync BN adds 4 reductions of C floats per layer (forward mean and var,
    # their two backward reductions) = 2 x the statistics' bytes.
    assert with_bn.param_bytes == without.param_bytes + 2 * (4 + 6) * 4 - (4 + 6) * 4
    extra = with_bn.by_kind()["all-reduce"]["bytes"] - with_bn.param_bytes
    assert extra - _scalar_bytes(with_bn) == 2 * with_bn.batch_stats_bytes
    split = with_bn.split_all_reduce()
    assert split["other_bytes"] == 2 * with_bn.batch_stats_bytes + _scalar_bytes(with_bn)


def test_residual_branches_share_one_bias_gradient_sum():
    # The add hands the same cotangent g to both branches' BatchNorm, so their bias gradients
    # (and the sum(g) of their backward passes) are the same sum: XLA computes and all-reduces
    # it once. ResNet: C floats fewer per downsampling block (R101: 3840 = 256+512+1024+2048).
    acc = collectives.step_collectives(Residual(), per_device_batch=B, size=H,
                                       parallelism="pmap", num_devices=N, num_classes=K)
    assert acc.batch_stats_bytes == 2 * 2 * 5 * 4
    expected = acc.param_bytes + 2 * acc.batch_stats_bytes + 2 * 4 - 5 * 4
    assert acc.by_kind()["all-reduce"]["bytes"] == expected


def test_pmap_and_mesh_move_the_same_bytes(counts):
    pmap, mesh = counts[(True, "pmap")].by_kind(), counts[(True, "mesh")].by_kind()
    assert {k: d["bytes"] for k, d in pmap.items()} == {k: d["bytes"] for k, d in mesh.items()}
    # (The op counts may differ: GSPMD and the explicit psums are combined differently.)


class WinogradNet(nn.Module):
    """A 3x3 16 -> 16 conv through segjax's conv routing, big enough (2 x 105² per device,
    >= 1e8 FLOPs) to take the Winograd F(4x4, 3x3) path on CPU."""

    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(16, (3, 3), name="stem")(x))
        x = nn.relu(nn.Conv(16, (3, 3), padding=((1, 1), (1, 1)), name="wino",
                            conv_general_dilated=ops.conv_general_dilated)(x))
        return {"logits": nn.Conv(K, (1, 1), name="head")(x)}


def test_mesh_all_reduces_a_winograd_kernel_gradient_in_the_transformed_domain():
    # GSPMD reduces over the batch where the batch sum happens: on the 6x6 = 36 Winograd
    # frequencies of the kernel gradient, before the (linear) map back to its 3x3 = 9 taps.
    # pmap's explicit psum is on the parameter-shaped gradient. Direct convolutions: equal.
    def count(mode):
        return collectives.step_collectives(WinogradNet(), per_device_batch=2, size=105,
                                            parallelism=mode, num_devices=N, num_classes=K)

    pmap = count("pmap").by_kind()["all-reduce"]["bytes"]
    assert count("mesh").by_kind()["all-reduce"]["bytes"] == pmap + (36 - 9) * 16 * 16 * 4
    with common.direct_convolutions():
        assert count("mesh").by_kind()["all-reduce"]["bytes"] == pmap


def test_all_reduce_bytes_do_not_depend_on_the_image_size(counts):
    bigger = _count(True, "pmap", size=(2 * H + 3, 2 * W + 3))
    assert bigger.by_kind() == counts[(True, "pmap")].by_kind()


def test_ohem_min_kept_gathers_the_per_pixel_losses(counts):
    task = make_task(K, loss_kind="ohem", loss_kwargs={"thresh": 0.7, "min_kept": 10})
    pixels = B * H * H  # square images of size H
    pmap = _count(True, "pmap", task=task)
    gathers = [o for o in pmap.ops if o.kind == "all-gather"]
    assert len(gathers) == 1
    assert gathers[0].operand_bytes == pixels * 4  # one float32 per local pixel
    assert gathers[0].result_bytes == N * pixels * 4  # the global batch's
    ce = counts[(True, "pmap")]
    assert pmap.by_kind()["all-reduce"]["bytes"] == ce.by_kind()["all-reduce"]["bytes"]
    assert pmap.total_bytes == ce.total_bytes + pixels * 4
    # Under mesh GSPMD gathers the same global per-pixel vector (as one flat array) and
    # all-reduces one more int32 (the count of valid pixels, which pmap reads off the gathered
    # array): 4 bytes more.
    mesh = _count(True, "mesh", task=task)
    mgathers = [o for o in mesh.ops if o.kind == "all-gather"]
    assert [o.result_bytes for o in mgathers] == [N * pixels * 4]
    assert mesh.by_kind()["all-reduce"]["bytes"] == pmap.by_kind()["all-reduce"]["bytes"] + 4
