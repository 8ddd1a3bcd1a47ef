// Command olareg-paged runs olareg (github.com/olareg/olareg) in memory with a small referrers
// page size, so that a long referrers list is split into pages joined by `Link: <...>; rel=next`.
// The upstream `olareg serve` command has no flag for that limit (its default is 4 MiB, which
// seeded test data never reaches). Built by hack/registries.sh into the cache dir, next to olareg.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/olareg/olareg"
	"github.com/olareg/olareg/config"
)

func main() {
	addr := flag.String("addr", "127.0.0.1", "listener address")
	port := flag.Int("port", 25004, "listener port")
	limit := flag.Int64("referrers-limit", 4096, "max bytes of one referrers response page")
	flag.Parse()

	yes, no := true, false
	// one line per request (msg=ServeHTTP method=... url=... status=...) at olareg's trace level
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: olareg.LogTrace}))
	conf := config.Config{
		HTTP:    config.ConfigHTTP{Addr: fmt.Sprintf("%s:%d", *addr, *port)},
		Storage: config.ConfigStorage{StoreType: config.StoreMem, ReadOnly: &no},
		Log:     logger,
		API: config.ConfigAPI{
			PushEnabled:   &yes,
			DeleteEnabled: &yes,
			Referrer:      config.ConfigAPIReferrer{Enabled: &yes, Limit: *limit},
		},
	}
	s := olareg.New(conf)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		select {
		case <-sig:
		case <-ctx.Done():
		}
		_ = s.Shutdown(context.Background())
		cancel()
		close(done)
	}()
	logger.Info("olareg-paged listening", "addr", conf.HTTP.Addr, "referrers-limit", *limit)
	if err := s.Run(ctx); err != nil {
		logger.Error("olareg-paged", "err", err)
		os.Exit(1)
	}
	<-done
}
