# The two commands of the README:  make demo  ·  make test
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test browser train-extra train-embedder train-detector bench-embedder bench-embedder-real bench-real-sweep bench-detector bench-calibration bench-incremental bench-throughput bench-milvus-index bench-matcher bench-driver-memory drill-reliability fonts clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: setup
	RAY_AUTH_MODE=disabled $(VENV)/bin/logoscan demo

test: setup browser
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q

# The review report's test opens the pages in headless Chromium (Debian's chromium package)
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null) \
	  || echo "chromium could not be installed: the report's browser test is skipped (and fails under CI=true)"

# Extra fonts for embedder training: Debian font packages, downloaded with apt-get (a package
# registry) and unpacked into build/fonts without a system install. Training only.
FONT_DEBS := fonts-aenigma fonts-liberation2 fonts-urw-base35 fonts-croscore fonts-crosextra-carlito \
	fonts-crosextra-caladea fonts-open-sans fonts-roboto-unhinted fonts-lato fonts-cantarell \
	fonts-comfortaa fonts-freefont-ttf fonts-linuxlibertine fonts-ebgaramond fonts-firacode fonts-hack \
	fonts-inconsolata fonts-league-spartan fonts-lobster fonts-oflb-euterpe fonts-adf-accanthis \
	fonts-adf-gillius fonts-adf-universalis fonts-adf-berenis fonts-adf-tribun
fonts: build/fonts/.unpacked
build/fonts/.unpacked:
	mkdir -p build/fonts/debs
	cd build/fonts/debs && apt-get download $(FONT_DEBS)
	for f in build/fonts/debs/*.deb; do dpkg -x $$f build/fonts; done
	touch $@

# The train extra: ImageNet init, photo backgrounds, text similarity
train-extra: setup
	$(PY) -m pip install -q -e '.[train,dev]'

# Re-make the shipped default models
# embedder-v3: embedder-v2 (as committed) fine-tuned on real photos in two stages; needs
# ../shared/data/real-photos. embedder-v2's own recipe: jobs/configs/train_embedder.yaml
train-embedder: train-extra fonts build/embedder-v2/model.safetensors
	$(PY) jobs/train_embedder.py --config jobs/configs/train_embedder_real.yaml
	$(PY) jobs/train_embedder.py --config jobs/configs/train_embedder_real2.yaml
train-detector: train-extra
	$(PY) jobs/train_detector.py --config jobs/configs/train_detector.yaml

# Benchmarks: print the tables committed under docs/bench/
bench-embedder: train-extra fonts
	$(PY) jobs/bench_embedder.py --write docs/bench/embedder.md
# The embedder on real photos (../shared/data/real-photos): zero-shot on held-out car makes, gallery
# views, the synthetic table beside it; the shipped embedder against embedder-v2
bench-embedder-real: train-extra fonts build/embedder-v2/model.safetensors
	$(PY) jobs/bench_embedder.py --no-ablation --artifact embedder-v2=build/embedder-v2 --write docs/bench/embedder_real.md
# A sweep over real photos with a gallery of 378 clean logos and its default threshold
bench-real-sweep: train-extra build/embedder-v2/model.safetensors
	RAY_AUTH_MODE=disabled $(PY) jobs/bench_real_sweep.py --embedder embedder-v2=build/embedder-v2 \
	  --embedder shipped=logoscan/weights/embedder --views clean --views $(ALL_VIEWS) --write docs/bench/real_sweep.md
ALL_VIEWS = clean,inverted,dark_ground,mono_dark,mono_light,chrome
# embedder-v2, the embedder before real photos, as committed in eafa88e
build/embedder-v2/model.safetensors:
	mkdir -p build/embedder-v2
	for f in config.json model.safetensors MODEL_CARD.md; do git show eafa88e:logoscan/weights/embedder/$$f > build/embedder-v2/$$f; done
bench-detector: train-extra
	$(PY) jobs/bench_detector.py --write docs/bench/detector.md
bench-calibration: setup
	$(PY) jobs/bench_calibration.py --write docs/bench/calibration.md
# Incremental nightly run at 1% churn vs a full sweep; rematch throughput (100 and 100k references)
bench-incremental: setup
	RAY_AUTH_MODE=disabled $(PY) jobs/bench_incremental.py --images 1000 --write docs/bench/incremental.md
# Throughput vs the decode/model floors and the naive loop; gallery 100 -> 100k; catalog N -> 5N (~45 min)
bench-throughput: setup
	RAY_AUTH_MODE=disabled $(PY) jobs/bench_throughput.py --images 2000 --write docs/bench/throughput.md
# Matching: the driver's one client vs 1/2/4 matcher actors (rematch of a 200k-region store)
bench-matcher: setup
	RAY_AUTH_MODE=disabled $(PY) jobs/bench_matcher.py --regions 200000 --write docs/bench/matcher.md
# The driver's peak memory, manifests of 100k / 1M / 2M rows that are all refused or missing (~20 min)
bench-driver-memory: setup
	RAY_AUTH_MODE=disabled $(PY) jobs/bench_driver_memory.py --rows 100000,1000000,2000000 --write docs/bench/driver_memory.md
# Milvus Lite queries/s over 100k references: index declared at creation vs built after the flush
bench-milvus-index: setup
	$(PY) jobs/bench_milvus_index.py --write docs/bench/milvus_index.md
# Fault drills (killed actor, killed driver + resume, S3 throttling, Milvus outage): docs/reliability.md
drill-reliability: setup
	RAY_AUTH_MODE=disabled $(PY) jobs/drill_reliability.py --images 300 --write docs/bench/reliability.md

clean:
	rm -rf demo-output build .pytest_cache
