// Command presence-ferretdb runs embedded FerretDB v1 (MongoDB wire protocol)
// with the SQLite backend, for the local development stack of presence.
//
// It exists because `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.2`
// builds a binary that panics at start (upstream issue #2982: the module zip
// lacks the generated build/version/version.txt). The embeddable package
// github.com/FerretDB/FerretDB/ferretdb skips that check.
//
// Flags (each falls back to an environment variable, then a default):
//
//	-listen-addr  STACK_FERRETDB_LISTEN   127.0.0.1:27017
//	-sqlite-dir   STACK_FERRETDB_DIR      ./ferretdb-data   (created if missing)
//	-log-file     STACK_FERRETDB_LOG      "" (stderr)
//	-log-level    STACK_FERRETDB_LOG_LEVEL info  (debug, info, warn, error)
//
// SIGTERM or SIGINT stops the listener, lets open connections finish (FerretDB
// gives them a few seconds), closes the SQLite databases and exits 0.
// A second signal, or 20 s without a clean stop, exits at once with status 1.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func main() {
	listenAddr := flag.String("listen-addr", envOr("STACK_FERRETDB_LISTEN", "127.0.0.1:27017"), "TCP address to listen on")
	sqliteDir := flag.String("sqlite-dir", envOr("STACK_FERRETDB_DIR", "ferretdb-data"), "directory for the SQLite database files (one file per database)")
	logFile := flag.String("log-file", envOr("STACK_FERRETDB_LOG", ""), "append logs to this file instead of stderr")
	logLevel := flag.String("log-level", envOr("STACK_FERRETDB_LOG_LEVEL", "info"), "log level: debug, info, warn, error")
	flag.Parse()

	var out io.Writer = os.Stderr
	if *logFile != "" {
		f, err := os.OpenFile(*logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			fmt.Fprintf(os.Stderr, "presence-ferretdb: open log file: %s\n", err)
			os.Exit(2)
		}
		defer f.Close()
		out = f
	}

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "presence-ferretdb: bad -log-level %q: %s\n", *logLevel, err)
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(logger)

	dir, err := filepath.Abs(*sqliteDir)
	if err != nil {
		logger.Error("bad -sqlite-dir", "err", err)
		os.Exit(2)
	}
	if err = os.MkdirAll(dir, 0o755); err != nil {
		logger.Error("cannot create SQLite directory", "dir", dir, "err", err)
		os.Exit(2)
	}
	// FerretDB wants a file: URI naming an existing directory, ending with "/".
	sqliteURL := "file:" + strings.TrimSuffix(dir, "/") + "/"

	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: *listenAddr},
		Logger:    logger,
		Handler:   "sqlite",
		SQLiteURL: sqliteURL,
	})
	if err != nil {
		// Typically "address already in use" or a bad SQLite directory.
		logger.Error("cannot start FerretDB", "err", err)
		os.Exit(1)
	}

	ctx, stop := context.WithCancel(context.Background())
	defer stop()

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		s := <-sigs
		logger.Info("signal received, shutting down", "signal", s.String())
		stop()
		select {
		case s = <-sigs:
			logger.Error("second signal, exiting now", "signal", s.String())
		case <-time.After(20 * time.Second):
			logger.Error("clean shutdown took more than 20s, exiting now")
		}
		os.Exit(1)
	}()

	logger.Info("presence-ferretdb starting", "listen", *listenAddr, "sqlite", sqliteURL, "pid", os.Getpid())
	if err = f.Run(ctx); err != nil {
		logger.Error("FerretDB stopped with an error", "err", err)
		os.Exit(1)
	}
	logger.Info("presence-ferretdb stopped cleanly")
}
