r"""Every semantic segmentation architecture of segjax at CPU size, trained one way on synthetic shapes.

One preset per architecture (`--config=experiments/configs/model_zoo.py:MODEL`, MODEL in `ZOO`):
the registered model with its paper's structure and defaults, narrowed to run on a CPU
(`CPU_WIDTHS`: ResNet stems of 16 channels with 64-channel heads, VGG at 1/8 width with 64-channel
fc layers (ReSeg: 32 GRU units; ICNet: 64-channel fusion), U-Net / SegNet / DeconvNet at 8 base channels; ENet and the patch classifier are
CPU-sized already), then the same recipe for all: `synthetic_shapes`, 64 x 64 crops of the
128 x 128 images, batch 16, 300 steps of SGD (momentum 0.9, poly lr 0.05; 0.02 for the VGG models,
which have no normalisation layers), weight decay 1e-4, the auxiliary loss at 0.4 where a model
has one, evaluation on the whole 128 x 128 validation images. ResNet-50/101 variants share every
line with the ResNet-18 one but the block count, so the zoo holds one depth per architecture
(DeepLab v2 is registered at depth 101 only).

Study `model_zoo` (`python -m experiments.ablations --study=model_zoo --workdir=DIR`) trains each
preset on `synthetic_shapes/clean` and `/all` with 3 seeds; `python -m
experiments.benchmarks.model_table --study_dir=DIR/model_zoo` puts the mIoU beside parameters,
GFLOPs and speed. The measured table is in BENCHMARKS.md.

    python -m experiments.train --workdir=/tmp/zoo_pspnet \
      --config=experiments/configs/model_zoo.py:pspnet_resnet18
"""

from __future__ import annotations

import ml_collections

from experiments.configs.shapes_ablation import short_shapes_recipe

# One model per architecture (registry names).
ZOO = ("unet", "segnet", "enet", "fcn_resnet18", "deeplabv3_resnet18", "deeplabv3plus_resnet18",
       "pspnet_resnet18", "icnet_resnet18", "encnet_resnet18", "parsenet_resnet18", "deeplabv2_resnet101",
       "deconvnet", "patch_classifier", "reseg_vgg16", "pixelnet_vgg16", "parsenet_vgg16",
       "deeplabv1_vgg16", "fcn8s_vgg16", "fcn16s_vgg16", "fcn32s_vgg16")
PRESETS = ZOO

# CPU-sized widths: each model takes the options it has (`accepted_overrides`).
CPU_WIDTHS = {"width": 8, "base_features": 8, "fc_dim": 64, "head_channels": 64, "num_codes": 8,
              "mlp_dims": (128, 128), "hidden": 32, "fusion_channels": 64}


def cpu_overrides(name: str) -> dict:
    """The CPU-size model options of registered model `name`."""
    from segjax.models.registry import accepted_overrides

    accepted = accepted_overrides(name) or set()
    widths = dict(CPU_WIDTHS, backbone_width=8 if name.endswith("_vgg16") else 16)
    return {k: v for k, v in widths.items() if k in accepted}


def get_config(preset: str = "unet") -> ml_collections.ConfigDict:
    """Returns the config for `preset` (one of PRESETS)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} for model_zoo.py; presets: {PRESETS}")
    c = short_shapes_recipe(base_lr=0.02 if preset.endswith("_vgg16") else 0.05)
    c.model.name = preset
    for key, value in cpu_overrides(preset).items():
        c.model[key] = value
    return c
