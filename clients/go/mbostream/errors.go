package mbostream

// Error room: every error the client returns on purpose; the tree is on the kinds below.

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The kinds of *RPCError, matched with errors.Is. Every error the client returns on purpose:
//
//	error
//	├── *RPCError                  the server ended a call with a non-OK status
//	│   │                          (Method, Code, Message); errors.Is matches its kind:
//	│   ├── ErrInvalidRequest      INVALID_ARGUMENT: a malformed request (the message names the field)
//	│   ├── ErrInstrumentNotFound  NOT_FOUND: no book for the requested instrument
//	│   ├── ErrResumeOutOfRange    OUT_OF_RANGE: the resume position is no longer buffered
//	│   ├── ErrSlowConsumer        RESOURCE_EXHAUSTED for a reader that fell behind (ResumeAfter)
//	│   ├── ErrStreamLimit         RESOURCE_EXHAUSTED: the server's stream limit is reached
//	│   ├── ErrAuthThrottled       RESOURCE_EXHAUSTED: too many wrong operator tokens from this
//	│   │                          address; every control call is refused until its cool-down ends
//	│   ├── ErrMessageTooLarge     RESOURCE_EXHAUSTED: a message beyond the receiver's size limit
//	│   │                          (WithMaxMessageSize on this side); a stream ends with it
//	│   ├── ErrUnauthenticated     UNAUTHENTICATED: missing or wrong operator token
//	│   ├── ErrPermissionDenied    PERMISSION_DENIED: replay control is disabled
//	│   ├── ErrPreconditionFailed  FAILED_PRECONDITION: valid call, wrong replay state
//	│   │   └── ErrEpochChanged    a StreamEvents resume into another server run (epoch)
//	│   ├── ErrUnavailable         UNAVAILABLE: cannot connect, or the connection dropped
//	│   └── ErrDeadlineExceeded    DEADLINE_EXCEEDED (also matches context.DeadlineExceeded)
//	├── *ContinuityError           a live record's replay_sequence is not the expected one
//	│                              (Expected, Received): a gap or a duplicate
//	├── *MalformedBatchError       a StreamEvents batch whose columns differ in length
//	├── *ConfigError               an invalid Dial option or Backoff (Setting, Reason)
//	└── ErrClientClosed            the Client was closed while a stream was open
//
// One function turns gRPC status codes into these errors; the mapping follows the server's
// (server/mbostream/server/interceptors.py), and other codes give an *RPCError of no kind.
var (
	ErrInvalidRequest     = errors.New("invalid request")
	ErrInstrumentNotFound = errors.New("instrument not found")
	ErrResumeOutOfRange   = errors.New("resume position out of range")
	ErrSlowConsumer       = errors.New("slow consumer cut off")
	ErrStreamLimit        = errors.New("stream limit reached")
	ErrAuthThrottled      = errors.New("operator token attempts throttled")
	ErrMessageTooLarge    = errors.New("message larger than the size limit")
	ErrUnauthenticated    = errors.New("unauthenticated")
	ErrPermissionDenied   = errors.New("permission denied")
	ErrPreconditionFailed = errors.New("precondition failed")
	ErrEpochChanged       = errors.New("server epoch changed")
	ErrUnavailable        = errors.New("server unavailable")
	ErrDeadlineExceeded   = errors.New("deadline exceeded")
)

// ErrClientClosed ends a stream whose Client was closed.
var ErrClientClosed = errors.New("mbostream: client closed")

// parentKind is the tree above: a kind also matches its parent.
var parentKind = map[error]error{ErrEpochChanged: ErrPreconditionFailed}

var kindByCode = map[codes.Code]error{
	codes.InvalidArgument:    ErrInvalidRequest,
	codes.NotFound:           ErrInstrumentNotFound,
	codes.OutOfRange:         ErrResumeOutOfRange,
	codes.Unauthenticated:    ErrUnauthenticated,
	codes.PermissionDenied:   ErrPermissionDenied,
	codes.FailedPrecondition: ErrPreconditionFailed,
	codes.Unavailable:        ErrUnavailable,
	codes.DeadlineExceeded:   ErrDeadlineExceeded,
}

// The server names the resume point only when it cut off a slow reader.
var resumeAfterPattern = regexp.MustCompile(`start_after_sequence=(\d+)`)

// RESOURCE_EXHAUSTED has several causes, told apart by their messages: the server's
// (server/mbostream/errors.py, server/peers.py) and gRPC's own size checks ("received message
// larger than max", "message after decompression larger than max" in gRPC-Go; "Received message
// larger than max" in gRPC core, which the server runs on).
const (
	slowReaderText   = "slow reader"
	throttledText    = "too many failed control-token attempts"
	messageLimitText = "larger than max"
)

// RPCError is a call the server (or the transport) ended with a non-OK status.
type RPCError struct {
	// Method is the short RPC name, e.g. "GetBook".
	Method string
	// Code is the gRPC status code.
	Code codes.Code
	// Message is the status message.
	Message string
	// ResumeAfter is, for ErrSlowConsumer, the start_after_sequence the server suggested;
	// HasResumeAfter says whether it named one.
	ResumeAfter    uint64
	HasResumeAfter bool

	kind error
}

func (e *RPCError) Error() string {
	return fmt.Sprintf("mbostream: %s: %s: %s", e.Method, e.Code, e.Message)
}

// Is matches the error's kind and the kind's parents, and for CANCELLED and DEADLINE_EXCEEDED
// also context.Canceled and context.DeadlineExceeded.
func (e *RPCError) Is(target error) bool {
	for kind := e.kind; kind != nil; kind = parentKind[kind] {
		if kind == target {
			return true
		}
	}
	switch e.Code {
	case codes.Canceled:
		return target == context.Canceled
	case codes.DeadlineExceeded:
		return target == context.DeadlineExceeded
	}
	return false
}

// GRPCStatus lets status.FromError and status.Code see the original status.
func (e *RPCError) GRPCStatus() *status.Status {
	return status.New(e.Code, e.Message)
}

// ErrorFromStatus is the typed error of a failed call made directly on Client.Conn, e.g. with the
// generated ReplayService client; method names the RPC in the message. A nil err gives nil.
func ErrorFromStatus(method string, err error) error {
	if err == nil {
		return nil
	}
	return errorFromStatus(method, err)
}

// errorFromStatus is the typed error of a failed call; err must come from a gRPC call.
func errorFromStatus(method string, err error) *RPCError {
	st := status.Convert(err)
	e := &RPCError{Method: method, Code: st.Code(), Message: st.Message(), kind: kindByCode[st.Code()]}
	if st.Code() == codes.ResourceExhausted {
		e.kind = resourceExhaustedKind(e)
	}
	return e
}

// resourceExhaustedKind tells RESOURCE_EXHAUSTED's causes apart (and takes a slow reader's resume
// point); the server's stream limit is what remains.
func resourceExhaustedKind(e *RPCError) error {
	found := resumeAfterPattern.FindStringSubmatch(e.Message)
	switch {
	case found != nil:
		e.ResumeAfter, _ = strconv.ParseUint(found[1], 10, 64)
		e.HasResumeAfter = true
		return ErrSlowConsumer
	case strings.Contains(e.Message, slowReaderText):
		return ErrSlowConsumer
	case strings.Contains(e.Message, throttledText):
		return ErrAuthThrottled
	case strings.Contains(strings.ToLower(e.Message), messageLimitText):
		return ErrMessageTooLarge
	default:
		return ErrStreamLimit
	}
}

// epochChanged is the error of a resume the server refused as another run's position, or whose
// batches came from another epoch than the one asked for.
func epochChanged(err *RPCError) *RPCError {
	changed := *err
	changed.kind = ErrEpochChanged
	return &changed
}

// ContinuityError is a live record whose replay_sequence is not the one expected after the
// previous record: Received > Expected is a gap, Received < Expected a duplicate. On a filtered
// stream positions legitimately skip, so only duplicates (Received < Expected) are detected.
type ContinuityError struct {
	Expected uint64
	Received uint64
}

// Duplicate reports whether the record was one already handed out (rather than a gap).
func (e *ContinuityError) Duplicate() bool { return e.Received < e.Expected }

func (e *ContinuityError) Error() string {
	what := "gap"
	if e.Duplicate() {
		what = "duplicate"
	}
	return fmt.Sprintf("mbostream: replay_sequence %s: expected %d, received %d", what, e.Expected, e.Received)
}

// MalformedBatchError is a StreamEvents batch whose columns do not all have the same length.
type MalformedBatchError struct {
	Column   string
	Len      int
	Expected int
}

func (e *MalformedBatchError) Error() string {
	return fmt.Sprintf("mbostream: malformed batch: column %s has %d entries, expected %d", e.Column, e.Len, e.Expected)
}

// ConfigError is an invalid setting; Setting names the option.
type ConfigError struct {
	Setting string
	Reason  string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("mbostream: %s: %s", e.Setting, e.Reason)
}
