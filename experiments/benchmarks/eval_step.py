"""Benchmark segjax's eval step against torchvision (same architecture, alternating in one run).

  python -m experiments.benchmarks.eval_step --model=deeplabv3_resnet50 --batch=4 --size=256 \\
      --compare=torchvision [--dtype=bfloat16] [--json]

Prints a table (images/s, ms/step, compile time, GFLOP/step from XLA's cost analysis, MFU against
a matmul peak measured in the same run, peak memory); with --json the last line is one JSON object
with at least segjax_img_per_s, torchvision_img_per_s, ratio, compile_s, mfu. No TensorFlow.
"""

from experiments.benchmarks import step_bench

if __name__ == "__main__":
    step_bench.cli("eval")
