"""Every architecture, one recipe: accuracy on synthetic shapes against cost.

Each part trains one architecture of `experiments/configs/model_zoo.py` (CPU-sized widths, the
same 300-step recipe for all) on `synthetic_shapes/clean` and on `synthetic_shapes/all` (every
difficulty factor at once), 3 seeds each. `python -m experiments.benchmarks.model_table
--study_dir=DIR/model_zoo` joins the results to parameters, GFLOPs and speed; BENCHMARKS.md holds
the measured table and its plot. The paired differences in each part's table are `all - clean`
for the same seed: what the harder data costs that architecture.
"""

from experiments.ablations import Part, Study
from experiments.configs.model_zoo import ZOO

DATA = ("synthetic_shapes/clean", "synthetic_shapes/all")

STUDY = Study(
    name="model_zoo",
    question="How accurate is each architecture for its size and speed, trained alike on the "
             "same data (clean shapes, and with every difficulty factor)?",
    parts=tuple(
        Part(name=name, title=f"{name} (CPU size)",
             base=f"experiments/configs/model_zoo.py:{name}",
             sweeps=("dataset.name=" + ",".join(DATA),),
             metrics=("miou", "boundary_iou"))
        for name in ZOO),
)
