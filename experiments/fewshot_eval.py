r"""One-shot segmentation on held-out classes: the prototype model against two baselines.

    python -m experiments.fewshot_eval --run=/tmp/fs_s0,/tmp/fs_s1,/tmp/fs_s2 --workdir=/tmp/fs_eval

Each work dir is a run of `experiments.train --config=experiments/configs/fewshot.py:demo` (one per
training seed). On that run's evaluation episodes (the task's own: held-out classes, fixed seed),
three methods segment each query from its one support image, all with the run's trained encoder:

* `prototype`: the model (PANet: masked average pooling, cosine to the prototypes);
* `nearest_neighbour`: each query feature takes the label of the most cosine-similar support
  feature (stride-8 features; the support mask averaged to that grid, >= 0.5 is foreground);
* `finetune`: a fresh 1x1 classifier on the encoder fine-tuned on the support image alone (and
  its mirror image) for `--finetune_steps` SGD steps of class-balanced cross-entropy (plain
  cross-entropy learns "all background" from one image: fg mIoU 0.02), then applied to the query; the classifier
  only by default, the encoder too with `--finetune_encoder` (BatchNorm on its running
  statistics).

Prints and writes (`report.json`, `report.md`) per method the foreground mIoU over the held-out
classes and the FB-IoU, per seed and as mean ± 95 % t-interval over seeds (`segjax.metrics.stats`).
"""

from __future__ import annotations

import os

from absl import app, flags

from experiments import cli
from segjax import jsonio

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined only when it runs as a command (`__main__`), so that
    importing this module next to another command's (tests do) cannot collide on a name."""
    flags.DEFINE_list("run", None, "The few-shot training runs read (work dirs, one per seed).")
    flags.DEFINE_string("workdir", None, "Output directory (written).")
    flags.DEFINE_string("checkpoint", "latest", "'latest' (default: the trainer's 'best' was "
                        "chosen on these very episodes), 'best' or a step.")
    flags.DEFINE_integer("finetune_steps", 50, "SGD steps of the fine-tuning baseline.")
    flags.DEFINE_float("finetune_lr", 0.1, "Learning rate of the fine-tuning baseline.")
    flags.DEFINE_bool("finetune_encoder", False, "Fine-tune the encoder too (slow on a CPU: ~20 "
                      "min per 200 episodes at 128x128), not only the classifier.")
    flags.DEFINE_integer("batch", 20, "Episodes per batch.")


METHODS = ("prototype", "nearest_neighbour", "finetune")


def load_fewshot_run(run_dir: str, checkpoint: str):
    """(config, task, model, variables, data) of a few-shot run, refused by name otherwise."""
    from segjax.data import pipeline
    from segjax.train.restore import load_run

    run = load_run(run_dir, checkpoint)
    if run.task.name != "fewshot":
        raise ValueError(f"{run_dir} is a {run.task.name!r} run, not a few-shot run")
    return run.config, run.task, run.model, run.variables, pipeline.from_config(run.config.dataset)


def predictors(model, variables, *, finetune_steps: int, finetune_lr: float,
               finetune_encoder: bool = False):
    """{method: jitted fn(batch of episodes) -> predicted query labels [B, H, W]} (1-way 1-shot)."""
    import jax
    import jax.numpy as jnp

    from segjax.models.fewshot import cosine_logits
    from segjax.ops import resize

    def embed(v, x):
        return model.apply(v, x, train=False)["features"]

    @jax.jit
    def prototype(b):
        logits = model.apply(variables, b["support_image"], b["support_mask"], b["query_image"],
                             support_valid=b["support_valid"], train=False)["logits"]
        return jnp.argmax(logits, -1)

    @jax.jit
    def nearest_neighbour(b):
        s_img = b["support_image"][:, 0, 0]
        q_img = b["query_image"]
        h, w = q_img.shape[1:3]
        s_f, q_f = embed(variables, s_img), embed(variables, q_img)  # [B, h', w', C]
        grid = s_f.shape[1:3]
        mask = resize((b["support_mask"][:, 0, 0] * b["support_valid"][:, 0, 0])[..., None],
                      grid, method="bilinear")[..., 0] >= 0.5
        valid = resize(b["support_valid"][:, 0, 0].astype(jnp.float32)[..., None], grid,
                       method="bilinear")[..., 0] >= 0.5
        sim = jax.vmap(lambda q, s: cosine_logits(q, s.reshape(-1, s.shape[-1]), 1.0))(q_f, s_f)
        sim = jnp.where(valid.reshape(valid.shape[0], 1, 1, -1), sim, -jnp.inf)
        nearest = jnp.argmax(sim, -1)  # [B, h', w'] index into the support grid
        label = jnp.take_along_axis(mask.reshape(mask.shape[0], -1), nearest.reshape(nearest.shape[0], -1),
                                    axis=1).reshape(nearest.shape)
        onehot = jax.nn.one_hot(label.astype(jnp.int32), 2)
        return jnp.argmax(resize(onehot, (h, w), method="bilinear"), -1)

    channels = jax.eval_shape(embed, variables, jnp.zeros((1, 32, 32, 3), jnp.float32)).shape[-1]

    def finetune_one(s_img, s_mask, s_valid, q_img, key):
        h, w = s_img.shape[:2]
        images = jnp.stack([s_img, s_img[:, ::-1]])  # the support and its mirror image
        target = jnp.stack([s_mask, s_mask[:, ::-1]]).astype(jnp.int32)
        valid = jnp.stack([s_valid, s_valid[:, ::-1]])
        params = {"head": {"w": jax.random.normal(key, (channels, 2)) * 0.01, "b": jnp.zeros(2)}}
        if finetune_encoder:
            params["encoder"] = variables["params"]
        frozen = {"support": embed(variables, images), "query": embed(variables, q_img[None])}

        def logits_of(p, name, x):
            f = (embed({"params": p["encoder"], "batch_stats": variables["batch_stats"]}, x)
                 if finetune_encoder else frozen[name])
            return resize(f @ p["head"]["w"] + p["head"]["b"], (h, w), method="bilinear")

        def loss(p):  # class-balanced: the mean over foreground + the mean over background
            logp = jax.nn.log_softmax(logits_of(p, "support", images), -1)
            nll = -jnp.take_along_axis(logp, target[..., None], -1)[..., 0]
            return sum(jnp.sum(jnp.where(valid & (target == c), nll, 0.0))
                       / jnp.maximum(jnp.sum(valid & (target == c)), 1) for c in (0, 1))

        def step(p, _):
            g = jax.grad(loss)(p)
            return jax.tree.map(lambda a, b: a - finetune_lr * b, p, g), None

        params, _ = jax.lax.scan(step, params, None, length=finetune_steps)
        return jnp.argmax(logits_of(params, "query", q_img[None])[0], -1)

    @jax.jit
    def finetune(b):
        keys = jax.random.split(jax.random.key(0), b["query_image"].shape[0])
        return jax.lax.map(lambda a: finetune_one(*a), (
            b["support_image"][:, 0, 0], b["support_mask"][:, 0, 0], b["support_valid"][:, 0, 0],
            b["query_image"], keys))

    return {"prototype": prototype, "nearest_neighbour": nearest_neighbour, "finetune": finetune}


def evaluate_run(workdir: str, *, checkpoint: str, batch: int, finetune_steps: int,
                 finetune_lr: float, finetune_encoder: bool = False) -> dict:
    """{method: metrics} of one run's evaluation episodes (`FewShotAccumulator` metrics)."""
    import jax

    from segjax.tasks import fewshot as fewshot_task

    config, task, model, variables, data = load_fewshot_run(workdir, checkpoint)
    if task.ways != 1 or task.shots != 1:
        raise ValueError(f"{workdir}: the baselines are 1-way 1-shot; the run has {task.ways}-way "
                         f"{task.shots}-shot episodes")
    fns = predictors(model, variables, finetune_steps=finetune_steps, finetune_lr=finetune_lr,
                     finetune_encoder=finetune_encoder)
    accs = {m: task.new_accumulator() for m in METHODS}
    for b in task.eval_batches(data, batch_size=batch, pad_to=config.eval.pad_to):
        for m in METHODS:
            counts = fewshot_task.episode_counts(fns[m](b), b["query_target"], b["query_valid"], ways=1)
            accs[m].update({}, {**jax.device_get(counts), "classes": b["classes"]}, b)
        print(".", end="", flush=True)
    print()
    return {m: accs[m].result() for m in METHODS}


def markdown(results: dict, workdirs) -> str:
    from segjax.metrics import stats

    lines = ["| method | " + " | ".join(os.path.basename(os.path.normpath(w)) for w in workdirs)
             + " | mean ± 95 % CI (fg mIoU) | FB-IoU mean |",
             "|---|" + "---|" * len(workdirs) + "---|---|"]
    for m in METHODS:
        fg = [results[w][m]["fg_miou"] for w in workdirs]
        fb = [results[w][m]["fb_iou"] for w in workdirs]
        s = stats.summarize(fg)
        ci = f"{s.mean:.3f} ± {s.ci_half_width:.3f}" if s.n > 1 else f"{s.mean:.3f}"
        lines.append(f"| {m} | " + " | ".join(f"{x:.3f}" for x in fg) + f" | {ci} | {sum(fb) / len(fb):.3f} |")
    return "\n".join(lines)


def main(argv):
    cli.no_arguments(argv)
    if not FLAGS.run or not FLAGS.workdir:
        raise app.UsageError("--run and --workdir are required")
    for w in FLAGS.run:  # every run, before the first is evaluated
        cli.check_run_task("run", w, "fewshot")
    results = {}
    for w in FLAGS.run:
        print(f"{w}: ", end="", flush=True)
        results[w] = evaluate_run(w, checkpoint=FLAGS.checkpoint, batch=FLAGS.batch,
                                  finetune_steps=FLAGS.finetune_steps, finetune_lr=FLAGS.finetune_lr,
                                  finetune_encoder=FLAGS.finetune_encoder)
        for m in METHODS:
            print(f"  {m:18s} fg_miou {results[w][m]['fg_miou']:.4f}  fb_iou {results[w][m]['fb_iou']:.4f}")
    text = markdown(results, FLAGS.run)
    print(text)
    os.makedirs(FLAGS.workdir, exist_ok=True)
    jsonio.dump({"runs": FLAGS.run, "finetune_steps": FLAGS.finetune_steps,
                 "finetune_lr": FLAGS.finetune_lr, "finetune_encoder": FLAGS.finetune_encoder,
                 "checkpoint": FLAGS.checkpoint, "results": results},
                os.path.join(FLAGS.workdir, "report.json"), indent=2)
    with open(os.path.join(FLAGS.workdir, "report.md"), "w") as f:
        f.write(text + "\n")
    print(f"wrote {FLAGS.workdir}/report.json, report.md")


if __name__ == "__main__":
    cli.run(main, define_flags)
