"""End to end, the instance task: a narrow Mask R-CNN trains 2 steps on synthetic_shapes/tiny's
instance view, evaluates with COCOeval, ranks its checkpoint by mask AP and draws detections."""

import json
import os

import numpy as np
import pytest

from segjax.train import loop
from segjax.train.checkpoint import Checkpointer
from segjax.train.metric_writers import read_metrics
from tests.integration.test_train_loop import data_dir  # noqa: F401  (module fixture)

pytestmark = pytest.mark.slow


def test_maskrcnn_trains_evaluates_and_draws(tmp_path, data_dir):  # noqa: F811
    from experiments.configs import maskrcnn

    c = maskrcnn.get_config("demo")
    c.dataset.name, c.dataset.data_dir = "synthetic_shapes/tiny", data_dir
    c.dataset.crop_size, c.eval.pad_to = 48, 48
    c.batch_size = c.eval.batch_size = 4
    c.num_train_steps, c.log_every_steps = 2, 1
    c.eval_every_steps = c.checkpoint_every_steps = 2
    c.optimizer.boundaries, c.optimizer.warmup_steps = (1,), 0
    c.eval.num_visualizations = 2
    # Narrow and few proposals: compile time, not what is tested.
    c.model.backbone_width = 8
    c.model.fpn_channels = 16
    c.model.representation_size = 32
    c.model.mask_channels = 8
    c.model.rpn_pre_nms_top_n_train = c.model.rpn_post_nms_top_n_train = 64
    c.model.rpn_pre_nms_top_n_test = c.model.rpn_post_nms_top_n_test = 64
    c.model.box_batch_size_per_image = 32
    c.model.box_detections_per_img = 10
    result = loop.train_and_evaluate(c, str(tmp_path))

    records = read_metrics(str(tmp_path))
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2] and all(np.isfinite(r["loss"]) for r in train)
    assert train[0]["valid_pixels"] == 4  # the instance loss counts images
    (ev,) = [r for r in records if r["split"] == "validation"]
    for key in ("box_ap", "mask_ap", "mask_ap50", "mask_ap75"):
        assert 0.0 <= ev[key] <= 1.0 and ev[key] == pytest.approx(result[key])
    assert ev["num_instances"] > 0
    assert json.load(open(tmp_path / "config.json"))["task"] == "instance"
    assert sorted(os.listdir(tmp_path / "predictions" / "step_0000002")) == ["00000.png", "00001.png"]
    ckpt = Checkpointer(tmp_path / "checkpoints", best_metric="mask_ap")
    assert ckpt.all_steps() == [2] and ckpt.best_step() == 2
    ckpt.close()
