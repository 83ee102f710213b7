# Two commands on a fresh machine: `make run` and `make test`. Everything else is reached from them.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
export EMBED_HOME  ?= $(CURDIR)/.embed_assets
export DAGSTER_HOME ?= $(CURDIR)

.PHONY: install chromium pgbouncer run test lint bench eval clean db-stop

# torch first, pinned: 2.13.0 is a CPU build on local disk; an unpinned torch pulls a multi-GB CUDA build.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

# The browser test (embed_assets_tests/test_ui.py) drives Debian's chromium; Playwright cannot download a
# browser here. Installed once with apt as root; where that is impossible the test skips and says why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser test (about a minute)..."; \
	  [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "chromium could not be installed (needs root and apt-get): the browser test will be skipped"

# The hosted-Postgres tests (embed_assets_tests/test_hosted.py) put Debian's PgBouncer 1.18 in transaction mode
# in front of the embedded server, as Supabase's pooler does. Installed once with apt as root; else they skip.
pgbouncer:
	@command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || { \
	  echo "installing Debian's pgbouncer for the hosted-Postgres tests..."; \
	  [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbouncer >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbouncer >/dev/null 2>&1; }; }; } || \
	  echo "pgbouncer could not be installed (needs root and apt-get): the hosted-Postgres tests will be skipped"

run: install
	$(BIN)/embed-assets sample 12
	$(BIN)/embed-assets embed
	$(BIN)/embed-assets status
	$(BIN)/embed-assets search "can you hold the price flat if we sign a multi-year renewal" -k 3

test: install chromium pgbouncer
	$(BIN)/ruff check embed_assets embed_assets_tests deploy
	$(BIN)/ruff format --check embed_assets embed_assets_tests deploy
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check embed_assets embed_assets_tests deploy
	$(BIN)/ruff format --check embed_assets embed_assets_tests deploy

# Every figure against its floor (README "Performance"); ~50 min at full size (the seed group ~8 of them). JSON in $(EMBED_HOME)/bench.json.
bench: install
	$(BIN)/python -m embed_assets_tests.bench

# Retrieval quality on the development set (README "Search"): loads it into a fresh database, embeds it with
# the configured model, prints recall@1/3/5/10 and MRR per search mode beside the baselines (~5 min here).
EVAL_SET ?= $(CURDIR)/../shared/eval/qmsum-val
eval: install
	$(BIN)/embed-assets eval $(EVAL_SET)/queries.jsonl --load $(EVAL_SET)/meetings --json $(EMBED_HOME)/eval.json

db-stop: install
	$(BIN)/embed-assets db-stop

clean: db-stop
	rm -rf $(VENV) $(EMBED_HOME)
