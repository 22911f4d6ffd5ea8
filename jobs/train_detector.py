"""Train the default logo detector. Resumable: re-run the same command to continue from
<out>/checkpoint. Example:  python jobs/train_detector.py --config jobs/configs/train_detector.yaml
"""
import json

from logoscan import config_io
from logoscan.log import configure
from logoscan.train.common import job_parser
from logoscan.train.detector import DetectorTrainConfig, train

if __name__ == "__main__":
    a = job_parser(__doc__).parse_args()
    configure()
    print(json.dumps(train(config_io.load(DetectorTrainConfig, a.config, a.set), resume=not a.no_resume, config_file=a.config), indent=2))
