// Package testserver runs real `mbostream serve` subprocesses for the Go tests: on a free port (or
// a given one, to come back on it after a restart), in plaintext or over (mutual) TLS with a
// throw-away CA, on a deterministic sample made once by `mbostream generate`, each stopped by PID
// by the test that started it. Every wait is bounded. A missing `mbostream` command fails the
// tests; it never skips them.
package testserver

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

const (
	// ControlToken is the ReplayService token of every test server.
	ControlToken = "go-client-test-operator-token"
	// StartTimeout bounds a server's start-up, from exec to SERVING, and the sample's generation.
	StartTimeout = 60 * time.Second
	// StopTimeout bounds a server's exit after a signal.
	StopTimeout = 20 * time.Second
	// SampleInstruments is the number of instruments of the sample.
	SampleInstruments = 3
)

// sampleFile is the generated file every server replays (60,000 records, 3 instruments).
var sampleFile string

// Main is a package's TestMain: it generates the sample, runs the tests and removes the sample.
func Main(m *testing.M) {
	code, err := run(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mbostream Go tests:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func run(m *testing.M) (int, error) {
	bin, err := Command()
	if err != nil {
		return 1, err
	}
	dir, err := os.MkdirTemp("", "mbostream-go-test-")
	if err != nil {
		return 1, err
	}
	defer os.RemoveAll(dir)
	sampleFile = filepath.Join(dir, "small.mbo.dbn")
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "generate", "--out", sampleFile,
		"--records", "60000", "--instruments", fmt.Sprint(SampleInstruments), "--seed", "11").CombinedOutput()
	if err != nil {
		return 1, fmt.Errorf("mbostream generate: %w\n%s", err, out)
	}
	return m.Run(), nil
}

// Command is the server CLI: $MBOSTREAM_BIN, or the repository's .venv/bin/mbostream.
func Command() (string, error) {
	bin := os.Getenv("MBOSTREAM_BIN")
	if bin == "" {
		_, here, _, _ := runtime.Caller(0)
		bin = filepath.Join(filepath.Dir(here), "..", "..", "..", "..", ".venv", "bin", "mbostream")
	}
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("the mbostream server CLI is missing (%w): run scripts/bootstrap, or set MBOSTREAM_BIN", err)
	}
	return bin, nil
}

// Server is one `mbostream serve` subprocess.
type Server struct {
	// Address is the HOST:PORT it listens on.
	Address string
	tls     *TLS
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
	once    sync.Once
}

// Options shape a server.
type Options struct {
	// Port to listen on (0: a free one).
	Port int
	// Args are extra `mbostream serve` flags (pacing etc.).
	Args []string
	// Env are extra environment variables, "NAME=value".
	Env []string
	// TLS serves over TLS with these certificates (nil: plaintext).
	TLS *TLS
	// MutualTLS also requires client certificates signed by TLS's CA.
	MutualTLS bool
}

// Start starts `mbostream serve` on the sample (storage off) and waits until it is SERVING; the
// test's cleanup stops it by PID.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	if sampleFile == "" {
		t.Fatal("testserver.Start needs testserver.Main as the package's TestMain")
	}
	bin, err := Command()
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"--log-level", "warning", "--log-format", "text", "serve", sampleFile,
		"--host", "127.0.0.1", "--port", fmt.Sprint(opts.Port), "--metrics-port", "-1", "--no-store"}
	if opts.TLS != nil {
		args = append(args, opts.TLS.serveArgs(opts.MutualTLS)...)
	}
	s := &Server{
		tls:     opts.TLS,
		cmd:     exec.Command(bin, append(args, opts.Args...)...),
		logPath: filepath.Join(t.TempDir(), "serve.log"),
		exited:  make(chan struct{}),
	}
	logFile, err := os.Create(s.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	s.cmd.Env = append(os.Environ(), append([]string{"MBOSTREAM_CONTROL_TOKEN=" + ControlToken}, opts.Env...)...)
	s.cmd.Stderr = logFile
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop(t) })
	ready := make(chan string, 1)
	go readStdout(stdout, ready)
	go func() {
		_ = s.cmd.Wait()
		close(s.exited)
	}()
	select {
	case s.Address = <-ready:
	case <-s.exited:
		t.Fatalf("mbostream serve exited before listening:\n%s", s.log())
	case <-time.After(StartTimeout):
		t.Fatalf("mbostream serve printed no ready line within %s:\n%s", StartTimeout, s.log())
	}
	s.waitServing(t)
	return s
}

// readStdout hands over the address of the JSON ready line, then drains stdout so the server can
// never block on a full pipe.
func readStdout(stdout io.Reader, ready chan<- string) {
	scanner := bufio.NewScanner(stdout)
	for scanner.Scan() {
		var line struct {
			Listening string `json:"listening"`
		}
		if json.Unmarshal(scanner.Bytes(), &line) == nil && line.Listening != "" {
			ready <- line.Listening
		}
	}
	_, _ = io.Copy(io.Discard, stdout)
}

func (s *Server) waitServing(t testing.TB) {
	t.Helper()
	transport := insecure.NewCredentials()
	if s.tls != nil {
		transport = credentials.NewTLS(s.tls.ClientConfig(true))
	}
	conn, err := grpc.NewClient(s.Address, grpc.WithTransportCredentials(transport))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	for deadline := time.Now().Add(StartTimeout); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		reply, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && reply.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return
		}
	}
	t.Fatalf("mbostream serve never reported SERVING:\n%s", s.log())
}

func (s *Server) log() string {
	data, _ := os.ReadFile(s.logPath)
	if len(data) > 4000 {
		data = data[len(data)-4000:]
	}
	return string(data)
}

// Kill ends the server with SIGKILL (no shutdown of any kind) and waits until it is gone.
func (s *Server) Kill(t testing.TB) {
	t.Helper()
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-s.exited:
	case <-time.After(StopTimeout):
		t.Fatalf("mbostream serve (pid %d) did not exit after SIGKILL", s.cmd.Process.Pid)
	}
}

// Stop ends the server with SIGTERM, then SIGKILL after StopTimeout; later calls do nothing.
func (s *Server) Stop(t testing.TB) {
	s.once.Do(func() {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(StopTimeout):
			_ = s.cmd.Process.Signal(syscall.SIGKILL)
			<-s.exited
			t.Errorf("mbostream serve (pid %d) ignored SIGTERM", s.cmd.Process.Pid)
		}
	})
}

// FreePort is a port free on 127.0.0.1 right now, for a server that must come back on it.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
