"""The input-pipeline benchmark runs end to end (tiny arguments) and prints its table."""
import pytest


@pytest.mark.slow
def test_input_pipeline_benchmark_smoke(capsys):
    from experiments.benchmarks import input_pipeline
    input_pipeline.benchmark(images=4, batch=2, steps=1, crop=65, threads=[1], as_json=True)
    out = capsys.readouterr().out
    assert "| 1 |" in out and '"train_img_per_s"' in out
