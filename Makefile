# Two commands matter: `make run` (the service, demo mode without a key) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The browser tests' JavaScript clients (tests/js): installed when npm is there; without it
# those tests skip on a developer's machine (CI installs npm, and there they must run).
JS_STAMP := tests/js/node_modules/.installed
TEST_DEPS := $(STAMP) $(if $(shell command -v npm 2>/dev/null),$(JS_STAMP))

.PHONY: run test coverage lint bench soak mutation docs docs-serve clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

$(JS_STAMP): tests/js/package.json tests/js/package-lock.json
	npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
	touch $(JS_STAMP)

run: $(STAMP)
	$(PY) -m gunicorn -c gunicorn.conf.py app:app

test: $(TEST_DEPS)
	$(PY) -m pytest -q

# The suite under coverage.py, the gunicorn masters and workers it starts measured too
# (pyproject.toml, [tool.coverage.run]); not part of `make test`, which stays fast.
coverage: $(TEST_DEPS)
	rm -f .coverage .coverage.*
	$(PY) -m coverage run -m pytest -q
	$(PY) -m coverage combine -q
	$(PY) -m coverage report

# Mutation testing of the guards (bench/mutation.py): mutmut over identity, accounts, security,
# budgets and replies, each module against its own test files, at most MUTATION_BUDGET seconds
# each; `make mutation MODULES="identity accounts"` for some. Not part of `make test`.
MODULES ?=
MUTATION_BUDGET ?= 600
mutation: $(STAMP)
	$(PY) -m bench.mutation --budget $(MUTATION_BUDGET) $(MODULES)

bench: $(STAMP)
	$(PY) -m bench.run $(BENCH_ARGS)

# The documentation site (docs/, mkdocs.yml) into site/; strict: a broken link or anchor fails.
# `make test` builds it too (tests/test_docs.py), so CI checks it.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve --dev-addr 127.0.0.1:8000

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis tests/js/node_modules .coverage .coverage.* htmlcov site .mutation
