// Command fluxcheck parses Flux sources with Flux's own (pure Go) parser and reports syntax errors.
//
// Usage: go run ./tests/fluxcheck FILE...   (exit 1 when any file has an error)
//
// The storage docs' example queries cannot be run here (no InfluxDB 2.x server can be installed),
// so tests/test_docs_flux.py at least parses every one of them. It checks syntax, not semantics.
package main

import (
	"fmt"
	"os"

	"github.com/influxdata/flux/ast"
	"github.com/influxdata/flux/parser"
)

func main() {
	failed := false
	for _, path := range os.Args[1:] {
		src, err := os.ReadFile(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		pkg := parser.ParseSource(string(src))
		if ast.Check(pkg) == 0 {
			fmt.Printf("%s: ok\n", path)
			continue
		}
		failed = true
		ast.Walk(ast.CreateVisitor(func(node ast.Node) {
			for _, e := range node.Errs() {
				fmt.Printf("%s:%s: %s\n", path, node.Location().Start, e.Msg)
			}
		}), pkg)
	}
	if failed {
		os.Exit(1)
	}
}
