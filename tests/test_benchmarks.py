"""Benchmark plumbing (timings themselves are never asserted): the step builders and the
profiler's attribution of trace time to layers."""

import jax

from experiments.benchmarks import common, profile_step, step_bench
from segjax.models import create_model


def test_layer_key_strips_wrappers_and_marks_the_backward():
    name = "jit(train_step)/transpose(jvp(DeepLab))/backbone/layer4/0/conv3/dot_general"
    assert profile_step.layer_key("ynn_fusion.12", name) == (
        "bwd ynn_fusion               backbone/layer4/conv3/dot_general")
    assert profile_step.layer_key("copy.3", None).startswith("?   copy ")


def test_profile_attributes_every_traced_op_of_a_real_train_step(tmp_path):
    data = common.synthetic_batch(2, 32, 3)
    model = create_model("unet", num_classes=3, base_features=4, depth=2)
    run, _, flops, hlo = step_bench._segjax_train(model, data, with_hlo=True)
    assert flops > 0
    names = profile_step.op_names(hlo)
    assert any("transpose(jvp" in v for v in names.values())  # the backward is in there
    with jax.profiler.trace(str(tmp_path), create_perfetto_trace=True):
        run()
    times = profile_step.thunk_times(str(tmp_path))
    ops = [n for n in times if n in names]
    assert ops and all(times[n] >= 0 for n in ops)
