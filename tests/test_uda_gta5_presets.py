"""experiments/configs/uda_gta5.py: each preset holds its paper's recipe (the numbers written out
here from the authors' papers and scripts), passes the config check, builds its task without the
data (the target is opened on first use), and its model and task state initialise at the
preset's crop under `jax.eval_shape` (no weights, nothing trains)."""
import jax
import jax.numpy as jnp
import pytest

from experiments.configs import uda_gta5
from segjax.data import get_dataset_info
from segjax.tasks import build_task
from segjax.train import build, config_utils

# preset -> (uda.method, batch, iterations, method options) from AdaptSegNet's
# train_gta2cityscapes_multi.py, FDA's train.py / paper Sec. 3 and DACS's configUDA.json.
RECIPES = {
    "source_only": ("source_only", 1, 250_000, {}),
    "adaptsegnet": ("adversarial", 1, 250_000, {"adv_weight": 0.001, "disc_lr": 1e-4}),
    "fda_b01": ("fda", 1, 150_000, {"fda_beta": 0.01, "entropy_weight": 0.005,
                                    "entropy_eta": 2.0}),
    "fda_b05": ("fda", 1, 150_000, {"fda_beta": 0.05, "entropy_weight": 0.005,
                                    "entropy_eta": 2.0}),
    "fda_b09": ("fda", 1, 150_000, {"fda_beta": 0.09, "entropy_weight": 0.005,
                                    "entropy_eta": 2.0}),
    "dacs": ("dacs", 2, 250_000, {"ema_decay": 0.99, "pseudo_threshold": 0.968}),
}
# The reported Cityscapes val mIoU each docstring must quote.
REPORTED = {"source_only": "36.6", "adaptsegnet": "41.4", "fda_b01": "44.61",
            "fda_b05": "44.6", "fda_b09": "45.01", "dacs": "52.14"}


def test_presets_are_the_papers():
    assert set(uda_gta5.PRESETS) == set(RECIPES)
    for number in list(REPORTED.values()) + ["42.4", "50.45", "46.77"]:
        assert number in uda_gta5.__doc__


@pytest.mark.parametrize("preset", uda_gta5.PRESETS)
def test_preset_recipe_and_check(preset, tmp_path):
    c = uda_gta5.get_config(preset)
    c.lock()
    config_utils.check_config(c)
    method, batch, steps, options = RECIPES[preset]
    assert (c.task, c.model.name, c.dataset.name, c.uda.target) == (
        "uda", "deeplabv2_resnet101", "gta5", "cityscapes")
    assert (c.uda.method, c.batch_size, c.num_train_steps) == (method, batch, steps)
    assert {k: c.uda[k] for k in options} == options
    assert (c.dataset.crop_size, c.dataset.min_scale, c.dataset.max_scale, c.dataset.hflip) == (
        512, 0.5, 0.5, False)
    assert (c.eval.tta, tuple(c.eval.tta_scales), c.eval.tta_flip) == (True, (0.5,), False)
    # SGD 2.5e-4 on the backbone, x10 on the classifier, poly 0.9: lr_poly of the authors' code.
    kw = build.optimizer_kwargs(c)
    assert kw["base_lr"] * kw["backbone_lr_mult"] == pytest.approx(2.5e-4)
    assert (kw["base_lr"], kw["momentum"], kw["weight_decay"]) == (2.5e-3, 0.9, 5e-4)
    from segjax.train import optim

    params = {"backbone": {"kernel": jnp.zeros((3, 3))}, "classifier": {"bias": jnp.zeros(3)}}
    _, schedule = optim.create_optimizer(params, num_steps=steps, **kw)
    for t in (0, steps // 3, 9 * steps // 10):
        assert float(schedule(t)) == pytest.approx(2.5e-3 * (1 - t / steps) ** 0.9, rel=1e-5)
    assert c.uda.mix_augment is (preset == "dacs")  # DACS's jitter and blur: its paper's only
    # Builds without the data; the target is opened (and fails naming its data) on first use.
    with c.unlocked():
        c.dataset.data_dir = str(tmp_path)
    task = build_task(c, get_dataset_info("gta5"), None)
    if preset == "dacs":
        with pytest.raises(Exception, match="[Mm]anual"):
            task.target  # noqa: B018 (the property opens the streams)


@pytest.fixture(scope="module")
def abstract_model():
    """The presets' model (one: they share it), initialised abstractly at a 512 x 512 crop."""
    c = uda_gta5.get_config("adaptsegnet")
    task = build_task(c, get_dataset_info("gta5"), None)
    model = build.build_model(c, 19, task)
    x = jax.ShapeDtypeStruct((1, 512, 512, 3), jnp.float32)
    outputs, variables = jax.eval_shape(lambda k, x: model.init_with_output(k, x, train=False),
                                        jax.random.PRNGKey(0), x)  # one trace: init and apply
    return task, variables, outputs["logits"]


def test_model_and_discriminator_initialise_at_the_crop(abstract_model):
    task, variables, logits = abstract_model
    assert logits.shape == (1, 512, 512, 19)
    n = sum(x.size for x in jax.tree.leaves(variables["params"]))
    assert 42e6 < n < 44e6  # ResNet-101 (42.5M without fc) + the v2 ASPP's 4 x (3x3x2048x19)
    state = jax.eval_shape(task.init_task_state, jax.random.PRNGKey(1), variables)
    disc = sum(x.size for x in jax.tree.leaves(state["disc"]))
    # AdaptSegNet's discriminator: 4x4 convs 19->64->128->256->512->1, with biases.
    want = sum(4 * 4 * a * b + b for a, b in ((19, 64), (64, 128), (128, 256), (256, 512),
                                              (512, 1)))
    assert disc == want
