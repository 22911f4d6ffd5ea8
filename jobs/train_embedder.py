"""Train the default logo embedder. Resumable: re-run the same command to continue from
<out>/checkpoint. Example:  python jobs/train_embedder.py --config jobs/configs/train_embedder.yaml
"""
import argparse
import json

from logoscan import config_io
from logoscan.log import configure
from logoscan.train.embedder import EmbedderTrainConfig, finalize, train


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--finalize-only", action="store_true",
                    help="only (re)compute the default threshold of the artifact in <out>")
    a = ap.parse_args(argv)
    configure()
    cfg = config_io.load(EmbedderTrainConfig, a.config, a.set)
    if a.finalize_only:
        print(json.dumps(finalize(cfg.out, cfg), indent=2))
        return
    print(json.dumps(train(cfg, resume=not a.no_resume), indent=2))


if __name__ == "__main__":
    main()
