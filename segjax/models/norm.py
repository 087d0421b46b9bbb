"""Batch normalisation with PyTorch's semantics and cross-device synchronisation.

`flax.linen.BatchNorm` keeps the *biased* batch variance in its running statistics; PyTorch keeps
the unbiased one. Converted torchvision models (and recipes tuned on them) expect PyTorch's
update, so segjax uses this layer everywhere:

  normalise with the biased batch variance (training) or the running statistics (eval);
  running_mean <- (1 - momentum) * running_mean + momentum * batch_mean
  running_var  <- (1 - momentum) * running_var  + momentum * batch_var * n / (n - 1)

with `momentum=0.1` meaning what it means in PyTorch. Statistics are computed in float32 whatever
the compute dtype. Under `pmap`, `axis_name` averages the statistics over devices (sync BN); under
`jit` over a mesh the batch is one global array, so the statistics are global without it.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


class BatchNorm(nn.Module):
    """BatchNorm over the last axis of `x` ([..., C]), PyTorch semantics (see module docstring).

    Attributes:
      use_running_average: use the running statistics (eval) instead of batch statistics.
      axis_name: pmap axis to synchronise statistics over (None: no collective).
      momentum: PyTorch-style momentum (weight of the new batch statistics).
      epsilon: added to the variance.
      dtype: output dtype (None: the input's).
      param_dtype: dtype of scale/bias.
    Parameters are `scale` and `bias` [C]; statistics `mean` and `var` [C] in "batch_stats".
    """

    use_running_average: bool | None = None
    axis_name: str | None = None
    momentum: float = 0.1
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    scale_init: Callable[..., jax.Array] = nn.initializers.ones
    bias_init: Callable[..., jax.Array] = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        features = x.shape[-1]
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        scale = self.param("scale", self.scale_init, (features,), self.param_dtype)
        bias = self.param("bias", self.bias_init, (features,), self.param_dtype)

        xf = x.astype(jnp.float32)
        if use_running_average:
            mean, var = running_mean.value, running_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            count = 1
            for a in axes:
                count *= x.shape[a]
            # Two-pass (mean, then mean squared deviation) for accuracy; both synced.
            mean = jnp.mean(xf, axes)
            if self.axis_name is not None:
                mean = lax.pmean(mean, self.axis_name)
            var = jnp.mean(jnp.square(xf - mean), axes)
            if self.axis_name is not None:
                var = lax.pmean(var, self.axis_name)
                count = count * lax.psum(1, self.axis_name)
            if not self.is_initializing():
                m = self.momentum
                unbiased = var * (count / jnp.maximum(count - 1, 1))
                running_mean.value = (1 - m) * running_mean.value + m * mean
                running_var.value = (1 - m) * running_var.value + m * unbiased

        inv = lax.rsqrt(var + self.epsilon) * scale.astype(jnp.float32)
        y = (xf - mean) * inv + bias.astype(jnp.float32)
        return y.astype(self.dtype or x.dtype)
