package config

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"

	"gopkg.in/yaml.v3"
)

// LoadOptions adjusts how a configuration is loaded. The zero value uses the
// process environment and the file system.
type LoadOptions struct {
	// LookupEnv resolves ${VAR} references; nil means os.LookupEnv.
	LookupEnv func(string) (string, bool)
	// ReadFile reads the *_file secrets (nats.password_file,
	// identities.*.client_secret_file, identities.*.token_cache_key_file,
	// mailboxes[].imap.password_file);
	// nil means os.ReadFile. The configuration file itself is always read
	// with os.ReadFile.
	ReadFile func(string) ([]byte, error)
	// BaseDir, when set, is the directory relative paths of *_file settings
	// are resolved against (and rewritten to). LoadImporterWith sets it to
	// the configuration file's directory unless given.
	BaseDir string
}

// LoadImporter reads, expands, decodes, completes and validates the importer
// configuration at path. Relative *_file paths are taken relative to the
// directory of path.
func LoadImporter(path string) (*Importer, error) {
	return LoadImporterWith(path, LoadOptions{})
}

// LoadImporterWith is LoadImporter with options.
func LoadImporterWith(path string, opts LoadOptions) (*Importer, error) {
	return loadFile[Importer](path, opts)
}

// ParseImporter is LoadImporter for YAML text: lookupEnv (nil for
// os.LookupEnv) resolves ${VAR}, and relative *_file paths are read relative
// to the working directory.
func ParseImporter(data []byte, lookupEnv func(string) (string, bool)) (*Importer, error) {
	return ParseImporterWith(data, LoadOptions{LookupEnv: lookupEnv})
}

// ParseImporterWith is ParseImporter with options.
//
// The steps: substitute ${VAR}; parse the YAML; decode it strictly (every
// unknown key and wrongly typed value is a problem with its key path);
// resolve relative *_file paths against opts.BaseDir; read *_file secrets;
// apply defaults; validate. Problems are returned as one *ValidationError.
func ParseImporterWith(data []byte, opts LoadOptions) (*Importer, error) {
	return parseDocument[Importer](data, opts)
}

// document is a kind of configuration file (Importer, Sender).
type document[T any] interface {
	*T
	secretPairs() []secretPair
	ApplyDefaults()
	validate() []Problem
}

// loadFile reads and parses the configuration file at path.
func loadFile[T any, P document[T]](path string, opts LoadOptions) (*T, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	if opts.BaseDir == "" {
		abs, err := filepath.Abs(path)
		if err != nil {
			return nil, fmt.Errorf("config %s: %w", path, err)
		}
		opts.BaseDir = filepath.Dir(abs)
	}
	cfg, err := parseDocument[T, P](data, opts)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// parseDocument runs the steps of ParseImporterWith for any document type.
func parseDocument[T any, P document[T]](data []byte, opts LoadOptions) (*T, error) {
	if opts.LookupEnv == nil {
		opts.LookupEnv = os.LookupEnv
	}
	if opts.ReadFile == nil {
		opts.ReadFile = os.ReadFile
	}

	text, envProblems := expandEnv(string(data), opts.LookupEnv)
	if len(envProblems) > 0 {
		return nil, &ValidationError{Problems: envProblems}
	}

	root, err := parseSingleDocument(text)
	if err != nil {
		return nil, err
	}

	cfg := P(new(T))
	d := newDecoder()
	if root != nil {
		d.decode(root, reflect.ValueOf(cfg).Elem(), "")
	}
	if len(d.problems) > 0 {
		return nil, &ValidationError{Problems: dedupe(d.problems)}
	}

	if opts.BaseDir != "" {
		resolvePaths(reflect.ValueOf(cfg).Elem(), opts.BaseDir)
	}
	ps := loadSecretPairs(cfg.secretPairs(), opts.ReadFile)
	cfg.ApplyDefaults()
	ps = append(ps, cfg.validate()...)
	if len(ps) > 0 {
		for i := range ps {
			ps[i].Line = lineOf(d.lines, ps[i].Path)
		}
		return nil, &ValidationError{Problems: ps}
	}
	return (*T)(cfg), nil
}

// parseSingleDocument parses text into the content node of its only YAML
// document; it returns nil for an empty document.
func parseSingleDocument(text string) (*yaml.Node, error) {
	dec := yaml.NewDecoder(strings.NewReader(text))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		return nil, fmt.Errorf("parse yaml: %w", err)
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == nil:
		return nil, fmt.Errorf("parse yaml: expected one document, found another at line %d", extra.Line)
	case !errors.Is(err, io.EOF):
		return nil, fmt.Errorf("parse yaml: %w", err)
	}
	if doc.Kind == yaml.DocumentNode {
		if len(doc.Content) == 0 {
			return nil, nil
		}
		return doc.Content[0], nil
	}
	return &doc, nil
}

// lineOf finds the line of path, or of its closest ancestor present in the
// file (e.g. a missing key's mapping).
func lineOf(lines map[string]int, path string) int {
	for p := path; p != ""; p = parentPath(p) {
		if l, ok := lines[p]; ok {
			return l
		}
	}
	return 0
}
