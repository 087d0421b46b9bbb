"""`shapenet_part`: ShapeNet-part (Yi et al., SIGGRAPH Asia 2016), the benchmark of PointNet's Sec. 5.1.

16,881 shapes of 16 object categories, each point labelled with one of 50 parts; each category owns
a contiguous range of the global part ids (`CATEGORIES`: Airplane 0-3, Bag 4-5, ..., Table 47-49). The
builder reads the release PointNet++ distributes with normals,
`shapenetcore_partanno_segmentation_benchmark_v0_normal` (a zip; unpack it into the manual
directory), laid out as

    synsetoffset2category.txt                  "<Category>\\t<synset>" per line
    <synset>/<shape id>.txt                    one point per row: x y z nx ny nz part (global id)
    train_test_split/shuffled_{train,val,test}_file_list.json
                                               ["shape_data/<synset>/<shape id>", ...]

(`<manual_dir>/shapenetcore_partanno_segmentation_benchmark_v0_normal/` or `<manual_dir>/` itself).
Splits `train`, `validation`, `test` are the release's lists (12,137 / 1,870 / 2,874 shapes); results
are reported on test. Every shape keeps its own points (about 2,500, their
count varies) in the release's coordinates; the pipeline samples a fixed number.

Clear failures, each naming the file: a missing release, index or list; a category line or list
entry that is not the release's format or names an unknown synset; a shape listed twice or missing;
a shape file that is empty, not 7 numeric columns, has a non-finite value, a part id that is not an
integer, or one outside its category's range; a file over `MAX_FILE_BYTES`. Nothing is skipped.

Features: `points` float32 `[P, 3]`, `normals` float32 `[P, 3]`, `part` int32 `[P]` (global id),
`category` int32 (index in `CATEGORIES`), `id` ("<synset>/<shape id>").
"""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import tensorflow_datasets as tfds

from segjax.data.builders._common import LocalCodePath, manual_dir_of

RELEASE = "shapenetcore_partanno_segmentation_benchmark_v0_normal"
HOMEPAGE = "https://cs.stanford.edu/~ericyi/project_page/part_annotation/"
# (name, synset, number of parts) in the order of synsetoffset2category.txt, which numbers the parts.
CATEGORIES = (
    ("Airplane", "02691156", 4), ("Bag", "02773838", 2), ("Cap", "02954340", 2), ("Car", "02958343", 4),
    ("Chair", "03001627", 4), ("Earphone", "03261776", 3), ("Guitar", "03467517", 3),
    ("Knife", "03624134", 2), ("Lamp", "03636649", 4), ("Laptop", "03642806", 2),
    ("Motorbike", "03790512", 6), ("Mug", "03797390", 2), ("Pistol", "03948459", 3),
    ("Rocket", "04099429", 3), ("Skateboard", "04225943", 3), ("Table", "04379243", 3))
CATEGORY_NAMES = tuple(name for name, _, _ in CATEGORIES)
_FIRST_PART = np.cumsum([0] + [n for _, _, n in CATEGORIES])
PART_RANGES = {name: (int(_FIRST_PART[k]), int(_FIRST_PART[k + 1])) for k, (name, _, _) in enumerate(CATEGORIES)}
PART_NAMES = tuple(f"{name.lower()}/{j}" for name, _, n in CATEGORIES for j in range(n))  # 50, by global id
PART_CATEGORY = np.repeat(np.arange(len(CATEGORIES)), [n for _, _, n in CATEGORIES]).astype(np.int32)  # [50]
SPLIT_FILES = {"train": "shuffled_train_file_list.json", "validation": "shuffled_val_file_list.json",
               "test": "shuffled_test_file_list.json"}
MAX_FILE_BYTES = 64 * 2**20  # a shape file is ~0.2 MB; a larger one is refused before it is read

INSTRUCTIONS = f"""\
ShapeNet-part is not prepared yet. Download {RELEASE}.zip (PointNet++'s copy of the ShapeNet part
annotation with normals; see {HOMEPAGE} for the terms), unpack it into the manual directory so that
<manual_dir>/{RELEASE}/synsetoffset2category.txt exists, then build with
  python -m segjax.data prepare shapenet_part --data_dir=DATA_DIR --manual_dir=MANUAL_DIR"""


def find_release(manual_dir: str) -> str:
    """The release folder under `manual_dir`; FileNotFoundError with instructions if absent."""
    for path in (os.path.join(manual_dir, RELEASE), manual_dir):
        if os.path.isfile(os.path.join(path, "synsetoffset2category.txt")):
            return path
    raise FileNotFoundError(f"Missing the ShapeNet-part release in {manual_dir!r} (no {RELEASE}/"
                            "synsetoffset2category.txt).\n" + INSTRUCTIONS.replace("<manual_dir>", manual_dir, 1))


def read_categories(root: str) -> dict[str, int]:
    """`{synset: category index}` from `synsetoffset2category.txt`, checked against `CATEGORIES`."""
    path = os.path.join(root, "synsetoffset2category.txt")
    known = {synset: (k, name) for k, (name, synset, _) in enumerate(CATEGORIES)}
    out = {}
    with open(path) as f:
        for line_no, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or fields[1] not in known or known[fields[1]][1] != fields[0]:
                raise ValueError(f"{path}:{line_no}: expected '<Category> <synset>' of ShapeNet-part's 16 "
                                 f"categories ({', '.join(f'{n} {s}' for n, s, _ in CATEGORIES[:2])}, ...), "
                                 f"got {line.strip()!r}")
            out[fields[1]] = known[fields[1]][0]
    if not out:
        raise ValueError(f"{path} lists no category")
    return out


def read_split_lists(root: str, synsets: dict[str, int]) -> dict[str, list[tuple[str, str]]]:
    """`{split: [(synset, shape id), ...]}` from the three JSON lists; each shape in one split once."""
    seen, out = {}, {}
    for split, name in SPLIT_FILES.items():
        path = os.path.join(root, "train_test_split", name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Missing ShapeNet-part split list {path} (re-extract the release)")
        try:
            with open(path) as f:
                entries = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(entries, list):
            raise ValueError(f"{path} must hold a JSON list of 'shape_data/<synset>/<id>', got "
                             f"{type(entries).__name__}")
        out[split] = []
        for entry in entries:
            parts = entry.split("/") if isinstance(entry, str) else []
            if len(parts) != 3 or parts[0] != "shape_data" or not parts[2] or parts[1] not in synsets:
                raise ValueError(f"{path}: entry {entry!r} is not 'shape_data/<synset>/<id>' with a synset "
                                 "of synsetoffset2category.txt")
            key = (parts[1], parts[2])
            if key in seen:
                raise ValueError(f"{path}: shape {'/'.join(key)} is listed twice (also in {seen[key]})")
            seen[key] = path
            out[split].append(key)
    return out


def read_shape(path: str, category: int) -> dict[str, np.ndarray]:
    """One shape file -> `points`, `normals` float32 `[P, 3]`, `part` int32 `[P]`; ValueError naming
    `path` (and the row) when it is not P >= 1 rows of 7 finite numbers with integer part ids in the
    range of category `category`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Missing ShapeNet-part shape file {path} (listed in train_test_split/)")
    if os.path.getsize(path) > MAX_FILE_BYTES:
        raise ValueError(f"{path} is {os.path.getsize(path):,} bytes, more than the {MAX_FILE_BYTES:,} a "
                         "ShapeNet-part shape can take (a damaged file)")
    try:
        with warnings.catch_warnings():  # an empty file warns, then is refused below by name
            warnings.simplefilter("ignore", UserWarning)
            rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise ValueError(f"{path} is not rows of 7 numbers 'x y z nx ny nz part': {e}") from None
    if rows.shape[0] == 0 or rows.shape[1] != 7:
        raise ValueError(f"{path}: expected rows of 7 numbers 'x y z nx ny nz part', got shape {rows.shape}")
    bad = np.flatnonzero(~np.isfinite(rows).all(1))
    if bad.size:
        raise ValueError(f"{path}: row {bad[0] + 1} holds a NaN or infinite value")
    part = rows[:, 6]
    lo, hi = PART_RANGES[CATEGORY_NAMES[category]]
    bad = np.flatnonzero((part != np.round(part)) | (part < lo) | (part >= hi))
    if bad.size:
        raise ValueError(f"{path}: row {bad[0] + 1} has part id {part[bad[0]]!r}; {CATEGORY_NAMES[category]} "
                         f"parts are the integers {lo}..{hi - 1}")
    return {"points": rows[:, :3].astype(np.float32), "normals": rows[:, 3:6].astype(np.float32),
            "part": part.astype(np.int32)}


class ShapenetPart(LocalCodePath, tfds.core.GeneratorBasedBuilder):
    """ShapeNet-part from the manual directory; see the module docstring."""

    name = "shapenet_part"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "The release's train / val / test lists."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "points": tfds.features.Tensor(shape=(None, 3), dtype=np.float32),
                "normals": tfds.features.Tensor(shape=(None, 3), dtype=np.float32),
                "part": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                "category": tfds.features.Tensor(shape=(), dtype=np.int32),
                "id": tfds.features.Text(),
            }),
            supervised_keys=("points", "part"),
            homepage=HOMEPAGE,
        )

    def _split_generators(self, dl_manager):
        root = find_release(manual_dir_of(dl_manager))
        synsets = read_categories(root)
        return {split: self._generate_examples(root, synsets, shapes)
                for split, shapes in read_split_lists(root, synsets).items()}

    def _generate_examples(self, root, synsets, shapes):
        for synset, shape_id in shapes:
            shape = read_shape(os.path.join(root, synset, f"{shape_id}.txt"), synsets[synset])
            key = f"{synset}/{shape_id}"
            yield key, {**shape, "category": np.int32(synsets[synset]), "id": key}

    def check_source_data(self, manual_dir: str, *, download: bool = False) -> None:
        """Raises FileNotFoundError with instructions at once when the release is missing."""
        del download
        find_release(manual_dir)
