"""synthetic_volumes: determinism, the scene's structure, and what each difficulty factor does,
each checked against its formula (scipy's Rice distribution, a least-squares polynomial fit,
slab means), then the TFDS build read back."""
import dataclasses

import numpy as np
import pytest
import scipy.stats

from segjax.data.builders import synthetic_volumes as sv

CONFIGS = {c.name: c for c in sv.BUILDER_CONFIGS}
SHAPE = (18, 24, 24)


def _small(name):
    return dataclasses.replace(CONFIGS[name], shape=SHAPE)


@pytest.fixture(scope="module")
def examples():
    """`{config name: [examples 0..5 of train]}` at SHAPE."""
    return {name: [sv.generate(_small(name), "train", i) for i in range(6)]
            for name in ("clean", "noise", "bias", "anisotropic", "all")}


def test_same_seed_same_values_other_seed_or_split_differs(examples):
    config = _small("all")
    again = sv.generate(config, "train", 3)
    for key in ("image", "label", "spacing"):
        np.testing.assert_array_equal(again[key], examples["all"][3][key])
    assert not np.array_equal(sv.generate(dataclasses.replace(config, seed=1), "train", 3)["label"],
                              again["label"])
    assert not np.array_equal(sv.generate(config, "validation", 3)["label"], again["label"])


def test_organ_holds_the_lesions_and_classes_have_their_intensities(examples):
    present = np.zeros(sv.NUM_CLASSES, int)
    for ex in examples["clean"]:
        label, organ, image = ex["label"], ex["organ"], ex["image"][..., 0]
        assert ex["image"].shape == SHAPE + (1,) and ex["image"].dtype == np.float32
        assert label.shape == SHAPE and label.dtype == np.uint8
        np.testing.assert_array_equal(ex["spacing"], [1.0, 1.0, 1.0])
        np.testing.assert_array_equal(label > 0, organ)  # lesions lie inside the organ
        assert (label >= 2).any() and 0.03 < organ.mean() < 0.4
        present += np.bincount(label.ravel(), minlength=sv.NUM_CLASSES) > 0
        means = {k: image[label == k].mean() for k in range(4) if (label == k).any()}
        assert means[0] < means[1] - 0.25
        if 2 in means:
            assert means[2] > means[1] + 0.2
        if 3 in means:
            assert means[0] < means[3] < means[1]
    assert (present[1:] >= 2).all(), present  # every class in several volumes


def test_noise_is_rician_around_the_clean_image(examples):
    """Probability integral transform: the noisy voxel through the Rice CDF with b = clean /
    sigma, scale = sigma is uniform on [0, 1] (Kolmogorov-Smirnov over all voxels)."""
    for clean, noisy in zip(examples["clean"][:3], examples["noise"][:3]):
        np.testing.assert_array_equal(noisy["label"], clean["label"])
        np.testing.assert_array_equal(noisy["clean_image"], clean["image"][..., 0])
        s = clean["image"][..., 0].astype(np.float64).ravel()
        u = scipy.stats.rice.cdf(noisy["image"].ravel(), s / sv.NOISE_SIGMA, scale=sv.NOISE_SIGMA)
        assert scipy.stats.kstest(u, "uniform").pvalue > 1e-3
        # Control: Gaussian noise of the same sigma is told apart at the dark background.
        gauss = s + np.random.default_rng(0).normal(0, sv.NOISE_SIGMA, s.shape)
        u = scipy.stats.rice.cdf(np.abs(gauss), s / sv.NOISE_SIGMA, scale=sv.NOISE_SIGMA)
        assert scipy.stats.kstest(u, "uniform").pvalue < 1e-6


def test_bias_is_exp_of_a_cubic_polynomial(examples):
    """log(biased / clean) is fitted exactly by a polynomial of total degree <= 3 without a
    constant term in coordinates scaled to [-1, 1], and a degree-1 fit leaves a residual."""
    axes = [np.linspace(-1, 1, 2 * s + 1)[1::2] for s in SHAPE]
    z, y, x = (a.ravel() for a in np.meshgrid(*axes, indexing="ij"))
    terms = [(i, j, k) for i in range(4) for j in range(4) for k in range(4) if i + j + k <= 3]
    basis = np.stack([z ** i * y ** j * x ** k for i, j, k in terms], 1)
    for clean, biased in zip(examples["clean"][:3], examples["bias"][:3]):
        np.testing.assert_array_equal(biased["label"], clean["label"])
        log_gain = np.log(biased["image"].astype(np.float64) / clean["image"]).ravel()
        coef, *_ = np.linalg.lstsq(basis, log_gain, rcond=None)
        assert np.abs(basis @ coef - log_gain).max() < 1e-5
        assert abs(coef[terms.index((0, 0, 0))]) < 1e-5 and np.ptp(log_gain) > 0.2
        linear = basis[:, [terms.index(t) for t in terms if sum(t) <= 1]]
        coef1, *_ = np.linalg.lstsq(linear, log_gain, rcond=None)
        assert np.abs(linear @ coef1 - log_gain).max() > 1e-3


def test_anisotropic_averages_thick_slices(examples):
    t = sv.SLICE_THICKNESS
    for clean, thick in zip(examples["clean"], examples["anisotropic"]):
        depth = SHAPE[0] // t
        assert thick["image"].shape == (depth,) + SHAPE[1:] + (1,)
        np.testing.assert_array_equal(thick["spacing"], [t, 1.0, 1.0])
        fine = clean["image"][..., 0].astype(np.float64)
        want = np.stack([fine[s * t:(s + 1) * t].mean(0) for s in range(depth)])
        np.testing.assert_allclose(thick["image"][..., 0], want, rtol=1e-6)
        np.testing.assert_array_equal(thick["label"], clean["label"][1::t][:depth])
    for thick, hard in zip(examples["anisotropic"], examples["all"]):
        np.testing.assert_array_equal(hard["label"], thick["label"])
        np.testing.assert_array_equal(hard["clean_image"], thick["image"][..., 0])
        assert np.abs(hard["image"] - thick["image"]).mean() > 0.03


def test_bad_config_rejected():
    with pytest.raises(ValueError, match="factors"):
        sv.SyntheticVolumesConfig(name="x", factors=("fog",))
    with pytest.raises(ValueError, match="shape"):
        sv.SyntheticVolumesConfig(name="x", shape=(8, 48, 48))


def test_tfds_build_stores_the_generated_volumes(tmp_path):
    import tensorflow_datasets as tfds

    from segjax.data import get_dataset_info, prepare

    info = get_dataset_info("synthetic_volumes/tiny")
    config = CONFIGS["tiny"]
    tfds.disable_progress_bar()
    builder = prepare(info, str(tmp_path))
    features = builder.info.features
    for key in (info.image_key, info.label_key, info.id_key, "spacing"):
        assert key in features
    assert info.num_classes == 4 and info.class_names[3] == "lesion_b"
    for split, count in (("train", config.num_train), ("validation", config.num_validation)):
        source = builder.as_data_source(split)
        assert len(source) == count
        seen = {}
        for i in range(count):
            seen[source[i]["id"].decode()] = source[i]
        assert sorted(seen) == [f"{split}_{i:06d}" for i in range(count)]
        for i in range(count):
            want, got = sv.generate(config, split, i), seen[f"{split}_{i:06d}"]
            for key in ("image", "label", "spacing"):
                assert got[key].dtype == want[key].dtype
                np.testing.assert_array_equal(got[key], want[key])


def test_read_volumes_feeds_the_patch_sampler(tmp_path):
    """read_volumes returns the generated volumes in record order; patches drawn from them keep
    image and label aligned (the patch equals the volume's window) and forced slots see lesions
    or organ."""
    from segjax.data import patches
    from segjax.data.volumes import read_volumes

    config = CONFIGS["tiny"]
    volumes = read_volumes("synthetic_volumes/tiny", "validation", str(tmp_path))
    by_id = {v["id"]: v for v in volumes}
    assert sorted(by_id) == [f"validation_{i:06d}" for i in range(config.num_validation)]
    for i in range(config.num_validation):
        want, got = sv.generate(config, "validation", i), by_id[f"validation_{i:06d}"]
        np.testing.assert_array_equal(got["label"], want["label"])
        np.testing.assert_array_equal(got["image"], want["image"])
        assert got["label"].dtype == np.int32
    images, labels = [v["image"] for v in volumes], [v["label"] for v in volumes]
    batch = patches.sample_patches(images, labels, patch_size=(8, 12, 12), batch_size=3, seed=0,
                                   step=0)
    for b in range(3):
        start, case = batch["start"][b], batch["case"][b]
        window = tuple(slice(s, s + p) for s, p in zip(start, (8, 12, 12)))
        np.testing.assert_array_equal(batch["label"][b], labels[case][window])
        np.testing.assert_array_equal(batch["image"][b], images[case][window])
    assert (batch["label"][2] > 0).any() and batch["forced"].tolist() == [False, False, True]
    with pytest.raises(ValueError, match="split 'test'"):
        read_volumes("synthetic_volumes/tiny", "test", str(tmp_path))
