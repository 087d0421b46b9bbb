"""Convert a torchvision checkpoint into segjax variables (orbax) plus a small JSON description.

  python -m segjax.tools.convert_torchvision --model=deeplabv3_resnet50 \
      --weights=deeplabv3_resnet50_coco-cd0a2569.pth --out=/tmp/dlv3_r50

writes `/tmp/dlv3_r50/variables/` (orbax, `{"params", "batch_stats"}`) and `model.json`
(`{"model", "num_classes", "aux_loss"}`, or `{"model": "resnet50", "backbone_only": true, ...}`).
Load with `segjax.models.torchvision_import.load_converted(dir)`; for a backbone (`resnet18` ...
`resnet152`, `vgg16`, `vgg16_bn`: ImageNet classifiers without their last layer), merge into a
fresh model with `merge_backbone` (or pass the directory as a training config's `init_from`).
Supported models: `torchvision_import.SUPPORTED`.
torch is needed only here (to read the .pth file, with `weights_only=True`).
"""

from absl import app, flags

from segjax.models import torchvision_import

_MODEL = flags.DEFINE_enum("model", None, list(torchvision_import.SUPPORTED), "torchvision model name.")
_WEIGHTS = flags.DEFINE_string("weights", None, "Path of the torchvision .pth state dict.")
_OUT = flags.DEFINE_string("out", None, "Output directory (must not hold converted weights yet).")


def main(argv):
    del argv
    import os

    import torch

    if not os.path.isfile(_WEIGHTS.value):
        raise app.UsageError(f"--weights file {_WEIGHTS.value} does not exist")
    state_dict = torch.load(_WEIGHTS.value, map_location="cpu", weights_only=True)
    if "model" in state_dict and not any(k.endswith(".weight") for k in state_dict):
        state_dict = state_dict["model"]  # torchvision reference-script checkpoints
    state_dict = {k: v.detach().cpu().numpy() for k, v in state_dict.items()}
    variables = torchvision_import.convert(_MODEL.value, state_dict)
    config = torchvision_import.model_config(_MODEL.value, state_dict)
    config["source"] = os.path.abspath(_WEIGHTS.value)
    torchvision_import.save_converted(_OUT.value, variables, config)
    print(f"wrote {_MODEL.value} variables to {os.path.abspath(_OUT.value)}: {config}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["model", "weights", "out"])
    app.run(main)
