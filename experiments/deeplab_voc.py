r"""DeepLab on PASCAL VOC: the generic trainer (`experiments.train`) with
`experiments/configs/deeplab_voc.py` (the DeepLab v3+ paper recipe) as the default config.

    python -m experiments.deeplab_voc --workdir=/tmp/demo \
      --config=experiments/configs/deeplab_voc.py:demo [--config.KEY=VALUE ...]
"""

from __future__ import annotations

import os

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs",
                              "deeplab_voc.py")

if __name__ == "__main__":
    from experiments import train

    train.run(DEFAULT_CONFIG)
