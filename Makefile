# The two commands a new user needs (see README): `make demo` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
KDTUNE := $(VENV)/bin/kdtune

.PHONY: setup demo test lint bench clean

setup:
	@bash scripts/setup-venv.sh

demo: setup
	$(KDTUNE) search search_spaces/digits_quick.yaml
	$(KDTUNE) finalize --top 3 --seeds 3
	$(KDTUNE) report

test: setup
	$(PY) -m ruff check kdtune tests benchmarks
	@$(PY) -m pytest -q -n 2 --dist loadscope $(PYTEST_ARGS); rc=$$?; \
	 if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure" >&2; fi; exit $$rc

bench: setup
	$(PY) -m benchmarks.run_all $(BENCH_ARGS)

lint: setup
	$(PY) -m ruff check kdtune tests benchmarks

clean:
	rm -rf kdtune-runs .pytest_cache .ruff_cache
