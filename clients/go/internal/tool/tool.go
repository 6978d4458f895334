// Package tool is what the test tools under internal/ share: the command line (flags, then the
// server's HOST:PORT), a client dialled within DialTimeout, and the one-line error exits. Test
// tooling only.
package tool

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/mbostream/mbostream/clients/go/mbostream"
)

// DialTimeout bounds the dial of the server.
const DialTimeout = 30 * time.Second

// Name is the running command's name, as its messages start.
func Name() string {
	return filepath.Base(os.Args[0])
}

// Dial parses the command line (the flags the caller defined, then HOST:PORT) and dials that
// server with opts. A wrong command line prints the usage and exits 2; a failed dial exits 1.
func Dial(ctx context.Context, opts ...mbostream.Option) *mbostream.Client {
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s [flags] HOST:PORT\n", Name())
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	dialCtx, cancel := context.WithTimeout(ctx, DialTimeout)
	defer cancel()
	client, err := mbostream.Dial(dialCtx, flag.Arg(0), opts...)
	if err != nil {
		Fail(err)
	}
	return client
}

// Fail prints "NAME: err" on stderr and exits 1.
func Fail(err error) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", Name(), err)
	os.Exit(1)
}
