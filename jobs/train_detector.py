"""Train the default logo detector. Resumable: re-run the same command to continue from
<out>/checkpoint. Example:  python jobs/train_detector.py --config jobs/configs/train_detector.yaml
"""
import argparse
import json

from logoscan import config_io
from logoscan.log import configure
from logoscan.train.detector import DetectorTrainConfig, train


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--no-resume", action="store_true")
    a = ap.parse_args(argv)
    configure()
    cfg = config_io.load(DetectorTrainConfig, a.config, a.set)
    print(json.dumps(train(cfg, resume=not a.no_resume), indent=2))


if __name__ == "__main__":
    main()
