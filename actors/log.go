package actors

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/hashicorp/go-hclog"
)

// NewSystem returns an actor system whose own log goes to logger (protoactor logs
// through slog, with colours on stderr, unless told otherwise).
func NewSystem(logger hclog.Logger) *actor.ActorSystem {
	l := logger.Named("protoactor")
	return actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
		return slog.New(&slogHandler{l: l})
	}))
}

// slogHandler writes slog records to an hclog logger.
type slogHandler struct {
	l     hclog.Logger
	attrs []any
	group string
}

func (h *slogHandler) Enabled(_ context.Context, level slog.Level) bool {
	return h.l.GetLevel() <= hclogLevel(level)
}

func (h *slogHandler) Handle(_ context.Context, r slog.Record) error {
	args := append([]any(nil), h.attrs...)
	r.Attrs(func(a slog.Attr) bool {
		args = append(args, h.key(a.Key), a.Value.Resolve().Any())
		return true
	})
	h.l.Log(hclogLevel(r.Level), r.Message, args...)
	return nil
}

func (h *slogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	n := &slogHandler{l: h.l, group: h.group, attrs: append([]any(nil), h.attrs...)}
	for _, a := range attrs {
		n.attrs = append(n.attrs, h.key(a.Key), a.Value.Resolve().Any())
	}
	return n
}

func (h *slogHandler) WithGroup(name string) slog.Handler {
	g := name
	if h.group != "" {
		g = h.group + "." + name
	}
	return &slogHandler{l: h.l, attrs: h.attrs, group: g}
}

func (h *slogHandler) key(k string) string {
	if h.group == "" {
		return k
	}
	return h.group + "." + k
}

func hclogLevel(l slog.Level) hclog.Level {
	switch {
	case l < slog.LevelInfo:
		return hclog.Debug
	case l < slog.LevelWarn:
		return hclog.Info
	case l < slog.LevelError:
		return hclog.Warn
	}
	return hclog.Error
}

// LogPanics returns a receiver middleware that logs a panic with its stack and the
// message that caused it, then lets it go on to the actor's supervisor. protoactor logs
// a panic at Info with neither.
func LogPanics(logger hclog.Logger) actor.ReceiverMiddleware {
	return func(next actor.ReceiverFunc) actor.ReceiverFunc {
		return func(ctx actor.ReceiverContext, env *actor.MessageEnvelope) {
			defer func() {
				if r := recover(); r != nil {
					if _, ok := r.(Failure); ok {
						panic(r) // an expected failure: its supervisor logs it
					}
					logger.Error("actor panicked", "actor", ctx.Self().Id, "message", fmt.Sprintf("%T", env.Message),
						"panic", fmt.Sprint(r), "stack", string(debug.Stack()))
					panic(r)
				}
			}()
			next(ctx, env)
		}
	}
}

// Failure is what an actor panics with to hand an ordinary failure (a driver's I/O
// error, not a bug) to its supervisor. LogPanics lets it pass without a stack trace.
type Failure struct{ Err error }

func (f Failure) Error() string { return f.Err.Error() }

// Unwrap returns the failure's error.
func (f Failure) Unwrap() error { return f.Err }
