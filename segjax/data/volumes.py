"""Reading a volumetric dataset's split into host memory, for `segjax.data.patches`.

The volumetric builders (`synthetic_volumes`, `msd`) store `image` float32 `[D, H, W, C]`, `label`
uint8 `[D, H, W]`, `spacing` float32 `[3]` (mm along D, H, W) and `id`. Training samples patches
from whole volumes held on the host (nnU-Net's way), so a split is read once, whole.
"""
from __future__ import annotations

import numpy as np

from segjax.data import records
from segjax.data.datasets import DatasetInfo


def read_volumes(dataset: str | DatasetInfo, split: str, data_dir: str | None = None, *,
                 manual_dir: str | None = None) -> list[dict]:
    """Every example of `split` (prepared first if needed), in record order: dicts with `image`
    float32 `[D, H, W, C]`, `label` int32 `[D, H, W]` (the dataset's label map applied),
    `spacing` float32 `[3]` and `id` (str).

    Raises ValueError naming the split when it does not exist, and naming the example when a
    label value is outside the classes (and not the ignore label).
    """
    info = records.resolve(dataset)
    builder = records.prepare(info, data_dir, manual_dir=manual_dir)
    if split not in builder.info.splits:
        raise ValueError(f"split {split!r} not in {builder.info.full_name}; available: "
                         f"{sorted(builder.info.splits)}")
    table = info.lookup_table()
    source = builder.as_data_source(split)
    volumes = []
    for index in range(len(source)):
        example = source[index]
        name = example[info.id_key].decode() if info.id_key else str(index)
        label = table[example[info.label_key].astype(np.int64)]
        if (label < 0).any():
            raise ValueError(f"{info.name} split {split!r} example {name!r}: label values "
                             f"{np.unique(example[info.label_key][label < 0])[:10].tolist()} "
                             f"are not classes of the dataset (0..{info.num_classes - 1} or "
                             f"{info.ignore_label})")
        volumes.append({"image": np.asarray(example[info.image_key], np.float32),
                        "label": label.astype(np.int32),
                        "spacing": np.asarray(example["spacing"], np.float32), "id": name})
    return volumes
