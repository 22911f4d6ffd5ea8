"""The nightly sweep as a Ray job. On a cluster (RAY_ADDRESS is set by `ray job submit`):

    ray job submit --working-dir . -- python jobs/sweep.py --config jobs/configs/nightly.yaml

Locally it starts its own Ray. Flags override the config file, e.g. --set run_date=2026-11-23.
Exits non-zero when the sweep fails, so CI fails with it.
"""
import sys

from logoscan.cli import main

if __name__ == "__main__":
    sys.exit(main(["scan", *sys.argv[1:]]))
