"""Command line: `python -m segjax.data list` and
`python -m segjax.data prepare NAME [--data_dir=DIR] [--manual_dir=DIR] [--download]`."""
import argparse
import sys


def main(argv=None) -> int:
    """Runs the command in `argv` (default: `sys.argv[1:]`); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m segjax.data")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="registered dataset names")
    prep = commands.add_parser("prepare", help="build a dataset's TFDS files")
    prep.add_argument("name")
    prep.add_argument("--data_dir", default=None,
                      help="TFDS data dir (default ~/tensorflow_datasets)")
    prep.add_argument("--manual_dir", default=None, help="where the VOC/SBD tars or trees are")
    prep.add_argument("--download", action="store_true", help="download missing VOC/SBD files")
    args = parser.parse_args(argv)

    import segjax.data as data
    if args.command == "list":
        print("\n".join(data.available_datasets()))
        return 0
    try:
        builder = data.prepare(args.name, args.data_dir, manual_dir=args.manual_dir,
                               download=args.download)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    splits = {name: split.num_examples for name, split in builder.info.splits.items()}
    print(f"{args.name}: prepared in {builder.data_dir}: {splits}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
