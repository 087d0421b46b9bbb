"""train_batches / eval_batches on a small synthetic dataset: values, resume, sharding, seeds."""
import dataclasses
import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from segjax.data import eval_batches, num_examples, preprocess_image, train_batches
from segjax.data.builders.synthetic_shapes import generate
from segjax.data.pipeline import IMAGE_MEAN, IMAGE_STD, fold_indices, train_positions


def _take(it, n):
    return [next(it) for _ in range(n)]


def _train(info, data_dir, **kw):
    args = dict(split="train", batch_size=4, crop_size=(36, 44), seed=3, data_dir=data_dir,
                photometric=True)
    args.update(kw)
    return train_batches(info, **args)


def _example_ids(info, data_dir, split):
    from segjax.data.records import _builder
    source = _builder(info, data_dir).as_data_source(split)
    return [source[i]["image_id"].decode() for i in range(len(source))]


def test_preprocess_image_matches_formula(np_rng):
    image = np_rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    want = (image / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(preprocess_image(image), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        preprocess_image(image.astype(np.float32))


def test_eval_batches_equal_generated_examples(shapes_info, shapes_dir):
    """Every stored example reads back exactly (lossless PNG), padded with 0 / ignore."""
    config = shapes_info.builder_kwargs["config"]
    ids = _example_ids(shapes_info, shapes_dir, "validation")
    seen = []
    for batch in eval_batches(shapes_info, split="validation", batch_size=4, pad_to=(43, 41),
                              data_dir=shapes_dir):
        assert batch["image"].shape == (4, 43, 41, 3) and batch["label"].dtype == np.int32
        for b in range(4):
            if not batch["valid"][b]:
                assert batch["index"][b] == -1 and (batch["label"][b] == 255).all()
                assert (batch["image"][b] == 0).all()
                continue
            index = int(batch["index"][b])
            seen.append(index)
            split, number = ids[index].split("_")
            ex = generate(config, split, int(number))
            assert (batch["height"][b], batch["width"][b]) == (40, 40)
            np.testing.assert_allclose(batch["image"][b, :40, :40],
                                       preprocess_image(ex["image"]), atol=1e-6)
            np.testing.assert_array_equal(batch["label"][b, :40, :40], ex["label"][..., 0])
            assert (batch["label"][b, 40:] == 255).all()
            assert (batch["label"][b, :, 40:] == 255).all()
            assert (batch["image"][b, 40:] == 0).all() and (batch["image"][b, :, 40:] == 0).all()
    assert seen == list(range(10))


def test_eval_batches_shard_disjoint_and_cover(shapes_info, shapes_dir):
    per_process = [list(eval_batches(shapes_info, split="validation", batch_size=2, pad_to=40,
                                     data_dir=shapes_dir, process_index=p, process_count=3))
                   for p in range(3)]
    assert {len(b) for b in per_process} == {2}  # ceil(10 / 6) batches for every process
    indices = [int(i) for batches in per_process for b in batches
               for i, v in zip(b["index"], b["valid"]) if v]
    assert sorted(indices) == list(range(10))


def test_eval_rejects_images_larger_than_pad_to(shapes_info, shapes_dir):
    with pytest.raises(ValueError, match="raise pad_to"):
        list(eval_batches(shapes_info, split="validation", batch_size=2, pad_to=(39, 48),
                          data_dir=shapes_dir))


def test_train_batches_shapes_and_normalisation(shapes_info, shapes_dir):
    batch = next(_train(shapes_info, shapes_dir))
    assert batch["image"].shape == (4, 36, 44, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (4, 36, 44) and batch["label"].dtype == np.int32
    assert set(np.unique(batch["label"])) <= set(range(6)) | {255}
    pixels = batch["image"] * IMAGE_STD + IMAGE_MEAN  # back on 0..255
    assert pixels.min() > -1e-3 and pixels.max() < 255 + 1e-3


def test_train_without_augmentation_is_the_example(shapes_info, shapes_dir):
    """scale 1, no flip, crop = image size: batches are the stored examples, normalised."""
    ids = _example_ids(shapes_info, shapes_dir, "train")
    config = shapes_info.builder_kwargs["config"]
    batch = next(_train(shapes_info, shapes_dir, crop_size=40, min_scale=1.0, max_scale=1.0,
                        hflip=False, photometric=False, shuffle=False))
    for b in range(4):
        split, number = ids[b].split("_")
        ex = generate(config, split, int(number))
        np.testing.assert_allclose(batch["image"][b], preprocess_image(ex["image"]), atol=1e-6)
        np.testing.assert_array_equal(batch["label"][b], ex["label"][..., 0])


def test_start_step_resume_equals_uninterrupted(shapes_info, shapes_dir):
    full = _take(_train(shapes_info, shapes_dir), 9)  # 36 examples: crosses an epoch (24)
    resumed = _take(_train(shapes_info, shapes_dir, start_step=5), 4)
    for a, b in zip(full[5:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_process_shards_union_is_the_global_batch(shapes_info, shapes_dir):
    single = _take(_train(shapes_info, shapes_dir, batch_size=6), 3)
    shards = [_take(_train(shapes_info, shapes_dir, batch_size=2, process_index=p,
                           process_count=3), 3) for p in range(3)]
    for step in range(3):
        for key in ("image", "label"):
            np.testing.assert_array_equal(
                single[step][key], np.concatenate([s[step][key] for s in shards]))


def test_train_positions_shards_disjoint_cover_each_epoch():
    n, batch, procs = 10, 2, 3
    streams = [train_positions(n, seed=1, batch_size=batch, process_index=p,
                               process_count=procs) for p in range(procs)]
    steps = 5  # 5 global steps of 6 = 30 positions = 3 epochs
    taken = [[next(s) for _ in range(steps * batch)] for s in streams]
    by_epoch = {}
    for p in range(procs):
        for position, epoch in taken[p]:
            by_epoch.setdefault(epoch, []).append(position)
    assert sorted(by_epoch) == [0, 1, 2]
    for epoch, positions in by_epoch.items():
        assert sorted(positions) == list(range(n)), epoch
    orders = [[q for q, e in taken[0] if e == k] for k in range(2)]
    assert orders[0] != orders[1]  # reshuffled each epoch


def test_different_seeds_differ(shapes_info, shapes_dir):
    a = next(_train(shapes_info, shapes_dir, seed=1))
    b = next(_train(shapes_info, shapes_dir, seed=2))
    assert not np.array_equal(a["image"], b["image"])


def _digest(batches):
    h = hashlib.sha256()
    for batch in batches:
        h.update(batch["image"].tobytes())
        h.update(batch["label"].tobytes())
    return h.hexdigest()


def test_folds_partition(shapes_info, shapes_dir):
    n = num_examples(shapes_info, "train", shapes_dir)
    vals = [fold_indices(n, fold=k, num_folds=4, seed=0)[1] for k in range(4)]
    assert sorted(np.concatenate(vals).tolist()) == list(range(n))
    train, val = fold_indices(n, fold=1, num_folds=4, seed=0)
    assert not set(train) & set(val) and len(train) + len(val) == n
    got = [int(i) for b in eval_batches(shapes_info, split="train", batch_size=4, pad_to=40,
                                        data_dir=shapes_dir, fold=1, num_folds=4)
           for i, v in zip(b["index"], b["valid"]) if v]
    assert got == val.tolist()


@pytest.mark.parametrize("n, p", [(7, 1), (7, 2), (8, 3), (6, 5)])
def test_leave_p_out_folds_enumerate_every_p_subset_once(n, p):
    """Folds 0 .. C(n, p) - 1 are exactly itertools.combinations(range(n), p), each once."""
    import itertools
    import math
    folds = [fold_indices(n, fold=k, num_folds=0, seed=3, leave_out=p) for k in range(math.comb(n, p))]
    vals = [tuple(v.tolist()) for _, v in folds]
    assert sorted(vals) == list(itertools.combinations(range(n), p))
    for train, val in folds:
        assert train.tolist() == sorted(set(range(n)) - set(val.tolist()))


def test_leave_p_out_order_comes_from_the_seed_and_spreads_the_first_folds():
    first = [tuple(fold_indices(40, fold=k, num_folds=0, seed=0, leave_out=2)[1]) for k in range(6)]
    again = [tuple(fold_indices(40, fold=k, num_folds=0, seed=0, leave_out=2)[1]) for k in range(6)]
    other = [tuple(fold_indices(40, fold=k, num_folds=0, seed=1, leave_out=2)[1]) for k in range(6)]
    assert first == again and first != other
    # Not lexicographic: the first folds do not all hold out example 0.
    assert len({i for pair in first for i in pair}) > 6
    # Huge fold counts stay exact (Python integers): C(2000, 3) = 1,331,334,000 folds.
    train, val = fold_indices(2000, fold=1_331_333_999, num_folds=0, seed=0, leave_out=3)
    assert len(val) == 3 and len(train) == 1997 and len(set(val.tolist())) == 3


def test_leave_p_out_errors_name_the_fold_count():
    with pytest.raises(ValueError, match=r"C\(6, 2\) = 15 folds.*got 15"):
        fold_indices(6, fold=15, num_folds=0, seed=0, leave_out=2)
    with pytest.raises(ValueError, match="1 <= p < n"):
        fold_indices(6, fold=0, num_folds=0, seed=0, leave_out=6)


def test_leave_p_out_pipelines_train_and_evaluate_the_two_parts(shapes_info, shapes_dir):
    n = num_examples(shapes_info, "train", shapes_dir)
    train, val = fold_indices(n, fold=5, num_folds=0, seed=0, leave_out=3)
    got = [int(i) for b in eval_batches(shapes_info, split="train", batch_size=2, pad_to=40,
                                        data_dir=shapes_dir, fold=5, leave_out=3)
           for i, v in zip(b["index"], b["valid"]) if v]
    assert got == val.tolist()
    ids = _example_ids(shapes_info, shapes_dir, "train")
    config = shapes_info.builder_kwargs["config"]
    batch = next(_train(shapes_info, shapes_dir, crop_size=40, min_scale=1.0, max_scale=1.0,
                        hflip=False, photometric=False, shuffle=False, fold=5, leave_out=3))
    for b, index in enumerate(train[:4]):
        split, number = ids[index].split("_")
        np.testing.assert_array_equal(batch["label"][b],
                                      generate(config, split, int(number))["label"][..., 0])


def test_label_outside_classes_raises_naming_the_example(shapes_info, shapes_dir):
    """A mask value outside [0, K) and not the ignore label stops the pipeline (no clamping)."""
    three = dataclasses.replace(shapes_info, num_classes=3, class_names=("a", "b", "c"),
                                palette=shapes_info.palette[:3])
    with pytest.raises(ValueError, match=r"outside \[0, 3\).*train_0000\d\d"):
        for _ in range(6):  # 24 examples: some carry classes 3..5
            next(_train(three, shapes_dir, batch_size=4))


def test_fold_training_reads_only_the_training_part(shapes_info, shapes_dir):
    ids = _example_ids(shapes_info, shapes_dir, "train")
    config = shapes_info.builder_kwargs["config"]
    train, val = fold_indices(len(ids), fold=1, num_folds=4, seed=0)
    batch = next(_train(shapes_info, shapes_dir, crop_size=40, min_scale=1.0, max_scale=1.0,
                        hflip=False, photometric=False, shuffle=False, fold=1, num_folds=4,
                        seed=9))  # the partition depends on fold_seed, not on seed
    for b, index in enumerate(train[:4]):
        split, number = ids[index].split("_")
        np.testing.assert_array_equal(batch["label"][b],
                                      generate(config, split, int(number))["label"][..., 0])
    assert not set(train[:4]) & set(val)


def test_max_examples_trains_on_the_first_examples_only(shapes_info, shapes_dir):
    ids = _example_ids(shapes_info, shapes_dir, "train")
    config = shapes_info.builder_kwargs["config"]
    want = set()
    for image_id in ids[:3]:
        split, number = image_id.split("_")
        want.add(generate(config, split, int(number))["label"][..., 0].astype(np.int32).tobytes())
    stream = _train(shapes_info, shapes_dir, crop_size=40, min_scale=1.0, max_scale=1.0,
                    hflip=False, photometric=False, batch_size=2, max_examples=3, seed=4)
    seen = {label.astype(np.int32).tobytes() for _ in range(6) for label in next(stream)["label"]}
    assert seen == want  # 12 draws over 4 epochs: exactly the first three examples
    with pytest.raises(ValueError, match="max_examples"):
        _train(shapes_info, shapes_dir, max_examples=0)


def test_bad_split_fails_before_iterating(shapes_info, shapes_dir):
    with pytest.raises(ValueError, match="split 'nope'.*available"):
        eval_batches(shapes_info, split="nope", batch_size=2, pad_to=40, data_dir=shapes_dir)
    with pytest.raises(ValueError, match="split 'nope'.*available"):
        _train(shapes_info, shapes_dir, split="nope")


def test_tfrecord_prepared_dataset_reads_the_same(shapes_info, shapes_dir, tmp_path):
    """A dataset prepared earlier as TFRecord (e.g. by tfds.load) gives the same batches."""
    import tensorflow_datasets as tfds

    from segjax.data.records import _builder
    builder = tfds.builder("synthetic_shapes", data_dir=str(tmp_path),
                           **shapes_info.builder_kwargs)
    builder.download_and_prepare()
    assert builder.info.file_format.value == "tfrecord"
    assert _builder(shapes_info, str(tmp_path)).info.file_format.value == "tfrecord"
    for a, b in zip(eval_batches(shapes_info, split="validation", batch_size=4, pad_to=40,
                                 data_dir=str(tmp_path)),
                    eval_batches(shapes_info, split="validation", batch_size=4, pad_to=40,
                                 data_dir=shapes_dir)):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


@pytest.mark.slow
def test_two_processes_prepare_concurrently_and_stream_identical_batches(shapes_info, shapes_dir,
                                                                        tmp_path):
    """Two fresh processes build the same dataset into one new data dir at the same time, then
    stream batches (1 tf.data thread): both equal this process's batches from `shapes_dir`."""
    script = textwrap.dedent(f"""
        import dataclasses, hashlib
        from segjax.data import get_dataset_info, num_examples, train_batches
        from segjax.data.builders.synthetic_shapes import SyntheticShapesConfig
        config = SyntheticShapesConfig(name="test40", image_size=40,
                                       num_train=24, num_validation=10, max_objects=3)
        info = dataclasses.replace(get_dataset_info("synthetic_shapes"),
                                   builder_kwargs={{"config": config}})
        print("COUNT", num_examples(info, "train", {str(tmp_path)!r}))
        it = train_batches(info, split="train", batch_size=4, crop_size=(36, 44), seed=3,
                           data_dir={str(tmp_path)!r}, photometric=True, start_step=2)
        h = hashlib.sha256()
        for _ in range(3):
            b = next(it)
            h.update(b["image"].tobytes()); h.update(b["label"].tobytes())
        print("DIGEST", h.hexdigest())
    """)
    env = {**os.environ, "SEGJAX_TF_THREADS": "1"}
    # Output goes to files, not pipes: while this process waits on one child, the other may
    # hold the prepare lock and block on a full stderr pipe (TFDS progress output), and the
    # first child then waits on that lock forever.
    log_dir = tmp_path.parent / (tmp_path.name + "_logs")
    log_dir.mkdir()
    logs = [(log_dir / f"out{i}.txt", log_dir / f"err{i}.txt") for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=open(o, "w"),
                              stderr=open(e, "w"), text=True, env=env) for o, e in logs]
    want = _digest(_take(_train(shapes_info, shapes_dir, start_step=2), 3))
    for proc, (out_path, err_path) in zip(procs, logs):
        proc.wait(timeout=300)
        out, err = out_path.read_text(), err_path.read_text()
        assert proc.returncode == 0, err[-2000:]
        assert "COUNT 24" in out
        assert [line.split()[1] for line in out.splitlines() if line.startswith("DIGEST")] == [want]


def test_label_map_is_applied(shapes_info, shapes_dir):
    """A dataset's raw -> class map (here: reverse the 5 shapes, 0 -> ignore) reaches batches."""
    table = np.full(256, -1, np.int32)
    table[0], table[1:6] = 255, np.arange(4, -1, -1)
    remapped = dataclasses.replace(shapes_info, num_classes=5, class_names=tuple("abcde"),
                                   palette=shapes_info.palette[:5], label_map=table)
    plain = next(eval_batches(shapes_info, split="validation", batch_size=4, pad_to=40,
                              data_dir=shapes_dir))
    mapped = next(eval_batches(remapped, split="validation", batch_size=4, pad_to=40,
                               data_dir=shapes_dir))
    np.testing.assert_array_equal(mapped["label"], table[plain["label"]])
    np.testing.assert_array_equal(mapped["image"], plain["image"])


def test_abandoned_iterators_and_exit_do_not_deadlock(shapes_dir, tmp_path):
    """Dropping train/eval iterators with fetches in flight, then exiting, must not hang.

    Regression: with `Dataset.from_generator` the iterator's destructor waited, holding the GIL,
    for map workers that were waiting for the GIL inside the generator (about 1 run in 6 hung
    at exit; repeated abandonment makes it near-certain).
    """
    script = textwrap.dedent(f"""
        import dataclasses, gc
        from segjax.data import get_dataset_info, train_batches, eval_batches
        from segjax.data.builders.synthetic_shapes import SyntheticShapesConfig
        config = SyntheticShapesConfig(name="test40", image_size=40,
                                       num_train=24, num_validation=10, max_objects=3)
        info = dataclasses.replace(get_dataset_info("synthetic_shapes"),
                                   builder_kwargs={{"config": config}})
        for seed in range(12):
            it = train_batches(info, split="train", batch_size=2, crop_size=32, seed=seed,
                               data_dir={shapes_dir!r})
            next(it)
            ev = eval_batches(info, split="validation", batch_size=2, pad_to=40,
                              data_dir={shapes_dir!r})
            next(ev)
            del it, ev
            gc.collect()
        it = train_batches(info, split="train", batch_size=2, crop_size=32, seed=99,
                           data_dir={shapes_dir!r})
        next(it)
        print("DONE")
    """)
    out = tmp_path / "out.txt"
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=open(out, "w"),
                            stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("a process that abandoned tf.data iterators hung (deadlock at teardown)")
    assert proc.returncode == 0 and "DONE" in out.read_text()
