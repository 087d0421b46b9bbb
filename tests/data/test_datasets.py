"""Dataset registry: names, label maps, palettes, and that every entry matches its TFDS builder."""
import dataclasses

import numpy as np
import pytest
import tensorflow_datasets as tfds

from segjax.data import available_datasets, get_dataset_info
from segjax.data.datasets import DatasetInfo, voc_palette


def test_known_names_and_unknown_name_lists_them():
    names = available_datasets()
    for name in ("voc2012", "synthetic_shapes", "synthetic_shapes/occlusion",
                 "synthetic_shapes/all", "oxford_iiit_pet", "cityscapes", "scene_parse150"):
        assert name in names
    with pytest.raises(ValueError, match="voc2012.*synthetic_shapes|synthetic_shapes.*voc2012"):
        get_dataset_info("voc2013")


def test_voc_palette_hand_values():
    # Values from the VOC devkit's colour map (VOCcode/VOClabelcolormap.m).
    want = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128),
            8: (64, 0, 0), 15: (192, 128, 128), 20: (0, 64, 128), 255: (224, 224, 192)}
    palette = voc_palette()
    for k, rgb in want.items():
        assert tuple(palette[k]) == rgb, k
    info = get_dataset_info("voc2012")
    assert info.num_classes == 21 and info.ignore_label == 255
    np.testing.assert_array_equal(info.palette, palette[:21])


def test_identity_lookup_marks_other_values_invalid():
    table = get_dataset_info("voc2012").lookup_table()
    np.testing.assert_array_equal(table[:21], np.arange(21))
    assert table[255] == 255 and (table[21:255] == -1).all()


def test_pet_trimap_mapping():
    table = get_dataset_info("oxford_iiit_pet").lookup_table()
    assert (table[1], table[2], table[3], table[0], table[4]) == (1, 0, 255, -1, -1)


def test_cityscapes_label_ids_to_train_ids():
    info = get_dataset_info("cityscapes")
    table = info.lookup_table()
    assert info.num_classes == 19
    assert (table[7], table[8], table[26], table[33]) == (0, 1, 13, 18)
    for void in (0, 1, 6, 9, 10, 14, 15, 16, 18, 29, 30):  # unlabeled, ..., caravan, trailer
        assert table[void] == 255
    assert sorted(table[table != 255].tolist()) == list(range(19))


def test_scene_parse150_red_channel_mapping():
    info = get_dataset_info("scene_parse150")
    table = info.lookup_table()
    assert (table[0], table[1], table[100], table[101]) == (255, 0, 99, -1)
    assert info.label_channel == 0 and info.num_classes == 100
    assert info.class_names[3] == "person"


@pytest.mark.parametrize("name", ["voc2012", "synthetic_shapes/clean", "oxford_iiit_pet",
                                  "cityscapes", "scene_parse150"])
def test_entry_matches_tfds_features(tmp_path, name):
    """The TFDS builder exists and has the feature keys and splits the entry names."""
    info = get_dataset_info(name)
    builder = tfds.builder(info.tfds_name, data_dir=str(tmp_path))
    features = builder.info.features
    for key in (info.image_key, info.label_key, info.id_key, info.instance_key):
        if key is not None:
            assert key in features, (name, key)
    assert features[info.image_key].shape[-1] == 3


def test_info_validation():
    info = get_dataset_info("synthetic_shapes")
    with pytest.raises(ValueError, match="class_names"):
        dataclasses.replace(info, num_classes=3)
    with pytest.raises(ValueError, match="palette"):
        dataclasses.replace(info, palette=np.zeros((2, 3), np.uint8))
    assert isinstance(info, DatasetInfo) and info.train_split == "train"


def test_command_line(tmp_path, capsys):
    from segjax.data.__main__ import main
    assert main(["list"]) == 0
    assert "synthetic_shapes/occlusion" in capsys.readouterr().out.split()
    assert main(["prepare", "voc2012", f"--data_dir={tmp_path}"]) == 1
    assert "VOCtrainval_11-May-2012.tar" in capsys.readouterr().err
    assert main(["prepare", "synthetic_shapes/tiny", f"--data_dir={tmp_path}"]) == 0
    assert "'train': 32" in capsys.readouterr().out


def test_camvid_ids_and_unlabelled_to_ignore():
    """SegNet's CamVid masks: 0..10 are the classes, 11 ("Unlabelled") is ignored, the rest invalid."""
    info = get_dataset_info("camvid")
    table = info.lookup_table()
    assert info.num_classes == 11 and info.class_names[0] == "sky" and info.class_names[10] == "bicyclist"
    np.testing.assert_array_equal(table[:11], np.arange(11))
    assert table[11] == 255 and (table[12:] == -1).all()
    assert "no CamVid builder" in info.notes
