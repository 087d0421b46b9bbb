"""Model registry: maps architecture names to constructors.

Model files register their variants with `@register("name")` on a factory (a function or a
`functools.partial` of a Module class) whose keyword arguments are the supported overrides.
`create_model` checks the overrides against that signature, so a misspelt override fails with the
list of accepted ones instead of being silently ignored.

Example:
  >>> model = create_model("deeplabv3_resnet50", num_classes=21, output_stride=16)
  >>> variables = model.init(jax.random.key(0), jnp.zeros([1, 65, 65, 3]))
  >>> model.apply(variables, images)["logits"].shape  # [N, H, W, 21]
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

# Every module that registers models; imported lazily on first use so that importing the
# registry does not import every architecture.
_MODEL_MODULES = (
    "segjax.models.fcn",
    "segjax.models.unet",
    "segjax.models.deconvnet",
    "segjax.models.deeplab",
    "segjax.models.pspnet",
    "segjax.models.encnet",
    "segjax.models.parsenet",
    "segjax.models.pixelnet",
    "segjax.models.enet",
    "segjax.models.reseg",
    "segjax.models.icnet",
    "segjax.models.patch",
    "segjax.models.unet3d",
    "segjax.models.vnet",
    "segjax.models.pointnet",
    "segjax.models.detection.maskrcnn",
    "segjax.models.detection.tensormask",
    "segjax.models.detection.panet",
    "segjax.models.oracle",
    "segjax.models.fewshot",
)

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
# What each model's output dict holds, in the model's own terms (a task declares which of these
# it consumes, `Task.model_output`; the registry knows nothing of tasks).
OUTPUTS = {
    "dense": '"logits" [N, H, W, K] at the input resolution (and "aux_logits", the same shape, or a '
             'tuple of such maps, one per auxiliary head: ICNet\'s two label-guidance heads; EncNet adds '
             '"se_logits" [N, K], per-image class presence); in training a model may score sampled pixels only: '
             '"logits" [N, S, K] with their "pixel_index" [N, S] (PixelNet)',
    "dense3d": '"logits" [N, D, H, W, K] at the input resolution, from NDHWC volumes [N, D, H, W, C]',
    "points": '"logits" [N, P, K], one score vector per point, from point clouds [N, P, 3 + F] (xyz '
              'first), and "feature_transform" [N, k, k], the matrix the loss regularises (PointNet)',
    "detections": '"boxes", "scores", "classes", "num_detections", "mask_probs" (Mask R-CNN\'s '
                  'contract)',
    "score": '"quality" [N]: one score per image (and mask)',
    "episode": '"logits" of the query images given support images and masks',
    "dense_embeddings": '"logits" and per-pixel "embeddings" [N, H, W, D]',
}
_OUTPUT: dict[str, str] = {}
_loaded = False


def register(name: str, *, output: str = "dense"
             ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering `factory` under `name` (unique) with what it returns (`OUTPUTS`).

    Works from any module, the user's own included: import that module (e.g. from the config
    file) before the model is created."""
    if output not in OUTPUTS:
        raise ValueError(f"output={output!r} must be one of {sorted(OUTPUTS)}")

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = factory
        _OUTPUT[name] = output
        return factory

    return decorator


def module_variant(cls: type[nn.Module], *, hidden: tuple[str, ...] = (), doc: str | None = None,
                   **fixed: Any) -> Callable[..., nn.Module]:
    """`functools.partial(cls, **fixed)` as a registry factory: its signature (the accepted
    overrides) is the class's fields, with the `fixed` values as defaults, minus `hidden` (fields a
    variant's name fixes) and `parent` / `name`. The defaults stay declared once, on the class."""
    factory = functools.partial(cls, **fixed)
    sig = inspect.signature(cls)
    factory.__signature__ = sig.replace(parameters=[
        p.replace(default=fixed[p.name]) if p.name in fixed else p
        for p in sig.parameters.values() if p.name not in tuple(hidden) + ("parent", "name")])
    factory.__doc__ = doc or cls.__doc__
    return factory


def _load_all() -> None:
    global _loaded
    if not _loaded:
        for module in _MODEL_MODULES:
            importlib.import_module(module)
        _loaded = True


def available_models(output: str | None = None) -> list[str]:
    """Sorted names accepted by `create_model` (only those returning `output` if given)."""
    _load_all()
    return sorted(n for n in _REGISTRY if output is None or _OUTPUT[n] == output)


def model_output(name: str) -> str:
    """What model `name` returns: a key of `OUTPUTS` ("dense", "detections", ...)."""
    _load_all()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(available_models())}")
    return _OUTPUT[name]


def _accepted_overrides(factory: Callable[..., Any]) -> set[str] | None:
    """Keyword names `factory` accepts, or None when it takes **kwargs."""
    params = inspect.signature(factory).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.name not in ("parent", "name")}


def accepted_overrides(name: str) -> set[str] | None:
    """The overrides model `name` takes (None: any, its factory takes **kwargs)."""
    _load_all()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(available_models())}")
    accepted = _accepted_overrides(_REGISTRY[name])
    return None if accepted is None else accepted - {"num_classes"}


def create_model(name: str, *, num_classes: int, **overrides: Any) -> nn.Module:
    """Builds the registered model `name` predicting `num_classes` classes.

    Args:
      name: a name from `available_models()`.
      num_classes: number of output classes (> 0).
      **overrides: architecture options such as `output_stride`, `multi_grid`, `atrous_rates`,
        `aux_loss`, `dtype` (a dtype or its name, e.g. "bfloat16": the compute dtype; parameters
        and logits stay float32) and `axis_name` (the pmap axis over which BatchNorm statistics
        are synchronised; None under jit/mesh).

    Returns:
      A `flax.linen.Module` whose `apply(variables, images[N, H, W, 3], train=...)` returns
      `{"logits": [N, H, W, num_classes], ...}` at the input resolution.

    Raises:
      ValueError: unknown name (lists the available ones), unknown override (lists the accepted
        ones) or a non-positive `num_classes`.
    """
    _load_all()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(available_models())}")
    if not isinstance(num_classes, int) or num_classes <= 0:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    factory = _REGISTRY[name]
    accepted = _accepted_overrides(factory)
    if accepted is not None:
        unknown = sorted(set(overrides) - accepted - {"dtype"})
        if unknown:
            raise ValueError(
                f"model {name!r} does not accept override(s) {unknown}; "
                f"accepted: {sorted(accepted - {'num_classes'})}"
            )
    if isinstance(overrides.get("dtype"), str):
        overrides["dtype"] = jnp.dtype(overrides["dtype"])
    if accepted is not None and "dtype" not in accepted and "dtype" in overrides:
        if overrides["dtype"] != jnp.float32:
            raise ValueError(
                f"model {name!r} takes no `dtype` argument, so it cannot compute in "
                f"{overrides['dtype']}: add `dtype: Any = jnp.float32` to its factory and use it "
                "as its layers' compute dtype")
        del overrides["dtype"]  # float32 is what a model without a dtype computes in
    return factory(num_classes=num_classes, **overrides)
