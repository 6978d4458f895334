# Developer entry points. Each target is one script, so CI and people run the same thing.

.PHONY: run test install generate check-generated lock bench

## run: install what is missing, then serve the generated sample: UI + API on http://127.0.0.1:8080 (gRPC also on :50051)
run:
	scripts/bootstrap
	MBOSTREAM_SPOOL_MAX_BYTES=$${MBOSTREAM_SPOOL_MAX_BYTES:-1G} .venv/bin/mbostream run --loop

## test: install what is missing, then run every test (what CI runs)
test:
	scripts/test

## install: the Python environment (.venv) with the native core, nothing else
install:
	scripts/bootstrap

## generate: regenerate all code generated from proto/ (Go, TypeScript, Python)
generate:
	PYTHON=$${PYTHON:-$$(test -x .venv/bin/python && echo $(CURDIR)/.venv/bin/python || echo python3)} scripts/generate

## check-generated: fail with a diff if the generated code is stale
check-generated:
	PYTHON=$${PYTHON:-$$(test -x .venv/bin/python && echo $(CURDIR)/.venv/bin/python || echo python3)} scripts/check-generated

## lock: re-resolve requirements/requirements.in into the hashed lock file
lock:
	uv pip compile --python-version 3.11 --python-platform x86_64-manylinux_2_31 --generate-hashes \
		requirements/requirements.in -o requirements/requirements.lock

## bench: the book benchmark on a generated 5M-record file
bench:
	scripts/bootstrap
	.venv/bin/mbostream bench book
