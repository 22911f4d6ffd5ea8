"""Train the default logo embedder. Resumable: re-run the same command to continue from
<out>/checkpoint. Example:  python jobs/train_embedder.py --config jobs/configs/train_embedder.yaml
"""
import json

from logoscan import config_io
from logoscan.log import configure
from logoscan.train.common import job_parser
from logoscan.train.embedder import EmbedderTrainConfig, finalize, train


def main(argv=None):
    ap = job_parser(__doc__)
    ap.add_argument("--finalize-only", action="store_true",
                    help="only (re)compute the fallback threshold of the artifact in <out>")
    a = ap.parse_args(argv)
    configure()
    cfg = config_io.load(EmbedderTrainConfig, a.config, a.set)
    result = finalize(cfg.out, cfg) if a.finalize_only else train(cfg, resume=not a.no_resume)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
