"""Peak memory of sliding-window inference against volume size (and of one whole-volume forward).

  python -m experiments.benchmarks.sliding_window_memory [--sizes=40,64,96] [--roi=32]
      [--overlap=0.25] [--sw_batch_size=4] [--channels=8] [--json]

The model is a small 3-D conv net (1 -> C -> C -> 2 channels, 3x3x3 kernels, ReLU, softmax)
with random weights; the volume is `[1, S, S, S, 1]` for each S of `--sizes`. For each size, the
sliding window and one forward of the whole volume report:

* `live_mb`: the most memory held by live JAX arrays at once, measured during the run
  (`jax.live_arrays()` summed after every window batch's forward, and after the whole-volume
  forward): input, weights, output accumulator, weight map, one batch of windows and their
  predictions.
* `temp_mb`: XLA's scratch memory besides arguments and outputs, from the compiled programs'
  `memory_analysis()` (the largest of the window forward and the in-place add of one window
  batch for the sliding window; the forward on the whole volume otherwise): the activations.
* `peak_mb = live_mb + temp_mb`, a bound on the peak that is exact up to allocator slack. (A
  process's resident memory measures this badly on CPU: glibc keeps freed buffers of a few MB
  for reuse, so one call's peak hides the next one's.) On an accelerator the device's
  `peak_bytes_in_use` is also reported (a high-water mark since the process started).

Expected: the sliding window's temporaries are the same at every size and its live memory grows
only by the input and the output (4 bytes x (K + 1) per voxel with the weight map); the
whole-volume forward's temporaries grow with the volume (C channels of activations per voxel).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from segjax import jsonio
from segjax.inference import sliding_window_inference
from segjax.inference.sliding_window import _add_windows

OUT_CHANNELS = 2


def define_flags() -> None:
    """The command's flags (defined when it runs as a command)."""
    global _SIZES, _ROI, _OVERLAP, _SW, _CH, _JSON
    _SIZES = flags.DEFINE_list("sizes", ["40", "64", "96"], "Volume sides S ([1, S, S, S, 1]).")
    _ROI = flags.DEFINE_integer("roi", 32, "Window side.")
    _OVERLAP = flags.DEFINE_float("overlap", 0.25, "Window overlap.")
    _SW = flags.DEFINE_integer("sw_batch_size", 4, "Windows per forward call.")
    _CH = flags.DEFINE_integer("channels", 8, "Hidden channels of the conv net.")
    _JSON = flags.DEFINE_bool("json", False, "Print one JSON object as the last line.")


def conv_net_params(channels: int, seed: int = 0) -> list[jax.Array]:
    """DHWIO kernels of the 1 -> C -> C -> 2 conv net (He-scaled normal)."""
    sizes = [(1, channels), (channels, channels), (channels, OUT_CHANNELS)]
    keys = jax.random.split(jax.random.key(seed), len(sizes))
    return [jax.random.normal(k, (3, 3, 3, i, o)) * np.sqrt(2 / (27 * i))
            for k, (i, o) in zip(keys, sizes)]


@jax.jit
def conv_net(params: list[jax.Array], x: jax.Array) -> jax.Array:
    """`[B, D, H, W, 1]` -> `[B, D, H, W, 2]` softmax probabilities."""
    for i, w in enumerate(params):
        x = jax.lax.conv_general_dilated(x, w, (1, 1, 1), "SAME",
                                         dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
        x = jax.nn.relu(x) if i < len(params) - 1 else jax.nn.softmax(x)
    return x


def _mb(n: float) -> float:
    return round(n / 2 ** 20, 3)


def _live_bytes() -> int:
    return sum(a.nbytes for a in jax.live_arrays())


def measure(method: str, size: int, roi: int, overlap: float, sw_batch_size: int,
            channels: int) -> dict:
    """Peak memory of one method on one `[1, S, S, S, 1]` volume (see the module docstring)."""
    params = conv_net_params(channels)
    volume = jax.random.normal(jax.random.key(1), (1, size, size, size, 1))
    live = [0]
    if method == "sliding":
        windows = jax.ShapeDtypeStruct((sw_batch_size, roi, roi, roi, 1), jnp.float32)
        forward = conv_net.lower(params, windows).compile().memory_analysis()
        add = _add_windows.lower(
            jax.ShapeDtypeStruct((1, size, size, size, OUT_CHANNELS), jnp.float32),
            jax.ShapeDtypeStruct((sw_batch_size, roi, roi, roi, OUT_CHANNELS), jnp.float32),
            jax.ShapeDtypeStruct((sw_batch_size, 4), jnp.int32),
            jax.ShapeDtypeStruct((roi,) * 3, jnp.float32),
            jax.ShapeDtypeStruct((sw_batch_size,), jnp.float32)).compile().memory_analysis()
        temp = max(forward.temp_size_in_bytes, add.temp_size_in_bytes)

        def window_forward(windows):
            preds = conv_net(params, windows).block_until_ready()
            live[0] = max(live[0], _live_bytes())
            return preds

        out = sliding_window_inference(window_forward, volume, roi, overlap=overlap,
                                       sw_batch_size=sw_batch_size)
    else:
        temp = conv_net.lower(params, volume).compile().memory_analysis().temp_size_in_bytes
        out = conv_net(params, volume)
    out.block_until_ready()
    live[0] = max(live[0], _live_bytes())
    row = {"method": method, "size": size, "volume_mb": _mb(volume.nbytes),
           "output_mb": _mb(out.nbytes), "live_mb": _mb(live[0]), "temp_mb": _mb(temp),
           "peak_mb": _mb(live[0] + temp)}
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        row["device_peak_mb"] = _mb(stats["peak_bytes_in_use"])
    return row


def main(argv) -> None:
    del argv
    settings = dict(roi=_ROI.value, overlap=_OVERLAP.value, sw_batch_size=_SW.value,
                    channels=_CH.value)
    rows = []
    for size in map(int, _SIZES.value):
        for method in ("sliding", "whole"):
            rows.append(measure(method, size, **settings))
            print(f"# {rows[-1]}", flush=True)
    print(f"\n{jax.devices()[0].device_kind}, conv net 1-{_CH.value}-{_CH.value}-2, window "
          f"{_ROI.value}³, overlap {_OVERLAP.value}, {_SW.value} windows per call\n")
    device = "device_peak_mb" in rows[0]
    print("| volume | method | input MB | output MB | live MB | XLA temp MB | peak MB |"
          + (" device peak MB |" if device else ""))
    print("|---|---|---:|---:|---:|---:|---:|" + ("---:|" if device else ""))
    for r in rows:
        print(f"| {r['size']}³ | {r['method']} | {r['volume_mb']:.1f} | {r['output_mb']:.1f} | "
              f"{r['live_mb']:.1f} | {r['temp_mb']:.1f} | {r['peak_mb']:.1f} |"
              + (f" {r['device_peak_mb']:.1f} |" if device else ""))
    if _JSON.value:
        print(jsonio.dumps({"rows": rows, **settings}))


if __name__ == "__main__":
    define_flags()
    app.run(main)
