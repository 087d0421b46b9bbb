r"""GTA5 -> Cityscapes (`segjax.tasks.uda`): the setting every UDA paper reports, on accelerators.

DeepLab v2 ResNet-101 (`deeplabv2_resnet101`, output stride 8) learns from `gta5`'s labels (all
24,966 frames; `python -m segjax.data prepare gta5 --manual_dir=...`, docs/data.md) and adapts to
`cityscapes` (its 2,975 train images, labels never read), scored on Cityscapes val (500 images,
19 classes). Every preset starts from ImageNet weights:

    python -m segjax.tools.convert_torchvision --model=resnet101 \
      --weights=resnet101-63fe2227.pth --workdir=/tmp/r101
    python -m experiments.train --workdir=/tmp/gta5_dacs \
      --config=experiments/configs/uda_gta5.py:dacs --config.init_from=/tmp/r101

Presets (target mIoU the papers report on Cityscapes val, DeepLab v2 ResNet-101):

* `source_only`: GTA5 alone, AdaptSegNet's recipe without its discriminator; 36.6 "without
  adaptation" (Tsai et al., CVPR 2018, Table 1).
* `adaptsegnet`: output-space adversarial training, single level (`uda.method=adversarial`,
  lambda_adv 0.001, discriminator Adam 1e-4): 41.4 (Table 1; 42.4 with its second, multi-level
  discriminator on conv4, which segjax does not implement). The authors' recipe
  (`train_gta2cityscapes_multi.py`): GTA5 resized to 1280x720 and Cityscapes to 1024x512, whole
  images, batch 1, SGD lr 2.5e-4 (x10 on the classifier) momentum 0.9 weight decay 5e-4 poly 0.9
  over 250k iterations (stopped early at 150k), no flips.
* `fda_b01`, `fda_b05`, `fda_b09`: FDA (Yang & Soatto, CVPR 2020) with beta 0.01, 0.05, 0.09,
  entropy weight 0.005 with eta 2.0 from the first step: 44.61, 44.6 and 45.01 for the three
  single models trained from scratch (Table 1, "T=0"). The paper's 50.45 is their multi-band
  ensemble (MBT: softmax averaged over the three) after two rounds of self-training on its
  pseudo-labels (Table 1 "MBT (T=2)"; 46.77 for the ensemble before self-training): segjax has
  neither the ensemble's evaluation nor the self-training rounds, so 44.6-45.0 is the number
  these presets compare with. Authors' recipe: GTA5 resized to 1280x720 then 1024x512 crops,
  Cityscapes resized to 1024x512, batch 1, SGD 2.5e-4 (x10 classifier) poly 0.9, weight decay
  5e-4, 150k iterations (early stop at 100k), no flips.
* `dacs`: DACS (Tranheden et al., WACV 2021), EMA teacher 0.99, ClassMix, confidence 0.968,
  plus its colour jitter and blur of the mixed images (`uda.mix_augment=True`): 52.14 (Table 1;
  the authors' README: their released model peaked at 53.66 and ended at 53.04). Authors'
  recipe (`configs/configUDA.json`): 512x512 crops (GTA5 at 1280x720, Cityscapes at 1024x512),
  batch 2, SGD 2.5e-4 (x10 classifier) momentum 0.9 weight decay 5e-4 poly 0.9, 250k iterations,
  no flips.

What segjax does differently (none of this has been run here: no GPU, no data):
* Crops are squares, 512x512 for every preset, and both domains share one rescale factor: 0.5,
  Cityscapes' 1024x512 as every paper trains and evaluates it, so GTA5 is seen at 957x526
  instead of 1280x720, and AdaptSegNet and FDA see half-width Cityscapes crops instead of whole
  1024x512 images.
* Evaluation follows the papers: each val image is predicted at half resolution (1024x512,
  `eval.tta` with the single scale 0.5, no flip) and the logits upsampled to 2048x1024.
* Initialisation: torchvision's ImageNet ResNet-101; the authors start from a converted Caffe
  DeepLab v2 ResNet-101 (DACS's config calls it "coco", MS-COCO pretrained), which segjax
  cannot read. Their BatchNorm is frozen; segjax's trains (synchronised over the batch).
* The "x10 on the classifier" of all three is base_lr 2.5e-3 with backbone_lr_mult 0.1; weight
  decay applies to every parameter, as torch's SGD over the parameter groups. Early stopping is
  not applied: a run trains the full schedule and the last step is the result (uda task).
"""

from __future__ import annotations

import ml_collections

from experiments.configs.common import base_config

PRESETS = ("source_only", "adaptsegnet", "fda_b01", "fda_b05", "fda_b09", "dacs")
_FDA_BETAS = {"fda_b01": 0.01, "fda_b05": 0.05, "fda_b09": 0.09}


def get_config(preset: str = "source_only") -> ml_collections.ConfigDict:
    """Returns the config for `preset` (one of PRESETS)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} for uda_gta5.py; presets: {PRESETS}")
    c = base_config("uda")
    c.model.name = "deeplabv2_resnet101"
    c.model.output_stride = 8
    c.dataset.name = "gta5"
    c.uda.target = "cityscapes"
    c.dataset.train_split = "train"
    c.dataset.eval_split = "validation"  # the target's (Cityscapes val): the uda task scores it
    c.dataset.crop_size = 512
    c.dataset.min_scale = 0.5  # Cityscapes at 1024x512, the papers' training and test size
    c.dataset.max_scale = 0.5
    c.dataset.hflip = False
    c.batch_size = 1
    c.num_train_steps = 250_000
    c.log_every_steps = 100
    c.eval_every_steps = 5_000
    c.checkpoint_every_steps = 5_000
    c.optimizer.base_lr = 2.5e-3  # the classifier's; the backbone's is 2.5e-4 (x0.1)
    c.optimizer.backbone_lr_mult = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 5e-4
    c.optimizer.decay_norm_and_bias = True  # torch's SGD decays every parameter it is given
    c.eval.pad_to = 2048  # whole 1024 x 2048 Cityscapes images
    c.eval.batch_size = 8
    c.eval.tta = True  # the papers' protocol: predict at 1024x512, upsample the logits
    c.eval.tta_scales = (0.5,)
    c.eval.tta_flip = False
    c.uda.method = "source_only"
    if preset == "adaptsegnet":
        c.uda.method = "adversarial"
        c.uda.adv_weight = 0.001
        c.uda.disc_lr = 1e-4
    elif preset in _FDA_BETAS:
        c.uda.method = "fda"
        c.uda.fda_beta = _FDA_BETAS[preset]
        c.uda.entropy_weight = 0.005
        c.uda.entropy_eta = 2.0
        c.num_train_steps = 150_000
    elif preset == "dacs":
        c.uda.method = "dacs"
        c.uda.ema_decay = 0.99
        c.uda.pseudo_threshold = 0.968
        c.batch_size = 2
        c.uda.mix_augment = True  # DACS's colour jitter and blur of the mixed images
    return c
