"""Calibrate a gallery's match thresholds from labelled crops, as a job (locally or with
`ray job submit --working-dir . -- python jobs/calibrate.py ...`). Example:

    python jobs/calibrate.py --crops s3://bucket/calibration/ --milvus-uri http://milvus:19530 \
        --collection logos --out s3://bucket/calibration/out --target-far 0.01 [--ocr]

Writes calibration.json and PNG plots to --out and stores the thresholds with the gallery
version in the collection, where every later sweep of that gallery picks them up.
"""
import sys

from logoscan.cli import main

if __name__ == "__main__":
    sys.exit(main(["calibrate", *sys.argv[1:]]))
