"""Convert a torchvision checkpoint into segjax variables (orbax) plus a small JSON description.

  python -m segjax.tools.convert_torchvision --model=deeplabv3_resnet50 \
      --weights=deeplabv3_resnet50_coco-cd0a2569.pth --workdir=/tmp/dlv3_r50

writes `/tmp/dlv3_r50/variables/` (orbax, `{"params", "batch_stats"}`) and `model.json`
(`{"model", "num_classes", "aux_loss"}`, or `{"model": "resnet50", "backbone_only": true, ...}`).
Load with `segjax.models.torchvision_import.load_converted(dir)`; for a backbone (`resnet18` ...
`resnet152`, `vgg16`, `vgg16_bn`: ImageNet classifiers without their last layer), merge into a
fresh model with `merge_backbone` (or pass the directory as a training config's `init_from`).
`vgg19` gives the style-transfer features (`segjax.style.VGGFeatures(depth=19)`): pass the
directory to `python -m experiments.style --weights=DIR`.
Supported models: `torchvision_import.SUPPORTED`.
torch is needed only here (to read the .pth file, with `weights_only=True`).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from segjax.models import torchvision_import  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined under `__main__` only (as every command's: importing two
    commands in one process cannot collide on a flag name)."""
    flags.DEFINE_enum("model", None, list(torchvision_import.SUPPORTED), "torchvision model name.")
    flags.DEFINE_string("weights", None, "Path of the torchvision .pth state dict.")
    flags.DEFINE_string("workdir", None, "Output directory, written (must not hold converted "
                        "weights yet).")
    flags.mark_flags_as_required(["model", "weights", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")

    import torch

    if not os.path.isfile(FLAGS.weights):
        raise app.UsageError(f"--weights file {FLAGS.weights} does not exist")
    state_dict = torch.load(FLAGS.weights, map_location="cpu", weights_only=True)
    if "model" in state_dict and not any(k.endswith(".weight") for k in state_dict):
        state_dict = state_dict["model"]  # torchvision reference-script checkpoints
    state_dict = {k: v.detach().cpu().numpy() for k, v in state_dict.items()}
    variables = torchvision_import.convert(FLAGS.model, state_dict)
    config = torchvision_import.model_config(FLAGS.model, state_dict)
    config["source"] = os.path.abspath(FLAGS.weights)
    torchvision_import.save_converted(FLAGS.workdir, variables, config)
    print(f"wrote {FLAGS.model} variables to {os.path.abspath(FLAGS.workdir)}: {config}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
