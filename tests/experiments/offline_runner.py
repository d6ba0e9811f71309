"""Runs a fastedit job in this process with every file access outside the allowed places refused.

    python offline_runner.py FORBIDDEN_DIR demo OUT MODEL HPARAMS
    python offline_runner.py FORBIDDEN_DIR cli ARG...

An audit hook raises on any open, listdir or scandir of a path under FORBIDDEN_DIR (the offline data
folder beside the checkout), so a job that reads it fails loudly instead of passing by luck.
"""

import os
import sys


def _guard(forbidden: str) -> None:
    forbidden = os.path.realpath(forbidden)

    def hook(event, args):
        if event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.fsdecode(args[0])
            if path and os.path.realpath(path).startswith(forbidden + os.sep):
                raise PermissionError(f"read {path!r}, which a user's machine does not have")

    sys.addaudithook(hook)


def main(argv):
    _guard(argv[0])
    if argv[1] == "demo":
        from fastedit.experiments.demo import format_table, run_demo

        out, model, hparams = argv[2:5]
        print(format_table(run_demo(out, model_name=model, hparams=hparams, stats_max_len=64)))
        return 0
    from fastedit.cli import main as cli

    return cli(argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
