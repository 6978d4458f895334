module github.com/mbostream/mbostream/tests/fluxcheck

go 1.22

// Flux v0.65 parses in pure Go; later releases parse with the Rust libflux through cgo (pkg-config flux).
require github.com/influxdata/flux v0.65.1

require github.com/google/flatbuffers v1.11.0 // indirect
