# Developer entry points. Each target is one script, so CI and people run the same thing.

.PHONY: generate check-generated

## generate: regenerate all code generated from proto/ (Go, TypeScript, Python)
generate:
	scripts/generate

## check-generated: fail with a diff if the generated code is stale
check-generated:
	scripts/check-generated
