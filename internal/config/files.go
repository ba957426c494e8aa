package config

import (
	"errors"
	"io/fs"
	"maps"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
)

// secretPair is a Secret setting and its *_file alternative.
type secretPair struct {
	path      string // key path of the mapping holding both keys
	valueKey  string
	fileKey   string
	value     *Secret
	file      *string
	writeBack func() // for values held in a map
}

// secretPairs lists every X / X_file pair of the configuration.
func (c *Importer) secretPairs() []secretPair {
	pairs := []secretPair{{
		path: "nats", valueKey: "password", fileKey: "password_file",
		value: &c.NATS.Password, file: &c.NATS.PasswordFile,
	}}
	for _, name := range slices.Sorted(maps.Keys(c.Identities)) {
		id := c.Identities[name]
		path := joinKey("identities", name)
		// Both pairs point into id, so each write-back stores both fields.
		pairs = append(pairs, secretPair{
			path: path, valueKey: "client_secret", fileKey: "client_secret_file",
			value: &id.ClientSecret, file: &id.ClientSecretFile,
			writeBack: func() { c.Identities[name] = id },
		}, secretPair{
			path: path, valueKey: "token_cache_key", fileKey: "token_cache_key_file",
			value: &id.TokenCacheKey, file: &id.TokenCacheKeyFile,
			writeBack: func() { c.Identities[name] = id },
		})
	}
	for i := range c.Mailboxes {
		im := &c.Mailboxes[i].IMAP
		pairs = append(pairs, secretPair{
			path: joinIndex("mailboxes", i) + ".imap", valueKey: "password", fileKey: "password_file",
			value: &im.Password, file: &im.PasswordFile,
		})
	}
	return pairs
}

// loadSecretPairs reads every *_file secret of pairs into its Secret
// field: setting both the value and the file is a problem, and one
// trailing newline is dropped.
func loadSecretPairs(pairs []secretPair, readFile func(string) ([]byte, error)) []Problem {
	var ps problems
	for _, p := range pairs {
		if *p.file == "" {
			continue
		}
		valuePath, filePath := p.path+"."+p.valueKey, p.path+"."+p.fileKey
		if *p.value != "" {
			ps.add(filePath, "cannot be combined with %s; set only one of them", valuePath)
			continue
		}
		data, err := readFile(*p.file)
		if err != nil {
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			ps.add(filePath, "cannot read %q: %v", *p.file, err)
			continue
		}
		s := strings.TrimSuffix(string(data), "\n")
		s = strings.TrimSuffix(s, "\r")
		if s == "" {
			ps.add(filePath, "file %q is empty", *p.file)
			continue
		}
		*p.value = Secret(s)
		if p.writeBack != nil {
			p.writeBack()
		}
	}
	return ps
}

func resolvePaths(v reflect.Value, dir string) {
	switch v.Kind() {
	case reflect.Struct:
		t := v.Type()
		for i := range t.NumField() {
			f := v.Field(i)
			name := yamlName(t.Field(i))
			if name == "" {
				continue
			}
			if f.Kind() == reflect.String && f.Type() != secretType && strings.HasSuffix(name, "_file") {
				if p := f.String(); p != "" && !filepath.IsAbs(p) {
					f.SetString(filepath.Join(dir, p))
				}
				continue
			}
			resolvePaths(f, dir)
		}
	case reflect.Slice:
		for i := range v.Len() {
			resolvePaths(v.Index(i), dir)
		}
	case reflect.Map:
		for _, k := range v.MapKeys() {
			e := reflect.New(v.Type().Elem()).Elem()
			e.Set(v.MapIndex(k))
			resolvePaths(e, dir)
			v.SetMapIndex(k, e)
		}
	}
}
