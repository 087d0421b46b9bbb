"""Generic alias of `experiments.deeplab_voc` for any config: `python -m experiments.train ...`."""

from absl import app

from experiments.deeplab_voc import _parse_flags, main

if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
