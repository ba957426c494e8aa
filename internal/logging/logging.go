// Package logging builds the zap logger: JSON with ISO 8601 times in
// production, coloured console output for people at a terminal.
package logging

import (
	"fmt"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// New returns a logger for level (debug, info, warn, error) and format
// (json or console), writing to stderr.
func New(level, format string) (*zap.Logger, error) {
	lvl := zap.NewAtomicLevel()
	if level == "" {
		level = "info"
	}
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log.level: %w", err)
	}
	var cfg zap.Config
	switch format {
	case "", "json":
		cfg = zap.NewProductionConfig()
		cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
		cfg.EncoderConfig.TimeKey = "time"
	case "console":
		cfg = zap.NewDevelopmentConfig()
		cfg.EncoderConfig.EncodeLevel = zapcore.CapitalColorLevelEncoder
		cfg.EncoderConfig.EncodeTime = zapcore.TimeEncoderOfLayout("15:04:05.000")
		cfg.DisableStacktrace = true
	default:
		return nil, fmt.Errorf("log.format: %q is not json or console", format)
	}
	cfg.Level = lvl
	cfg.Sampling = nil
	return cfg.Build()
}
