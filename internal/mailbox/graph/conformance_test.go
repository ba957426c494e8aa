package graph_test

import (
	"testing"

	"github.com/mailpipe/mailpipe/internal/mailbox"
	"github.com/mailpipe/mailpipe/internal/mailbox/mailboxtest"
	"github.com/mailpipe/mailpipe/internal/testenv/graphfake"
)

// TestConformance runs the mailbox.Source conformance suite against the
// Graph fake: delta discovery with $batch moves on an English mailbox, and
// full listings with one move request each on a Dutch one ("Postvak IN").
func TestConformance(t *testing.T) {
	g := startFake(t)
	for _, v := range []struct {
		name  string
		h     graphHarness
		inbox string
	}{
		{"DeltaBatch", graphHarness{g: g, discovery: "delta"}, "Inbox"},
		{"ListLocalizedNoBatch", graphHarness{g: g, discovery: "list", disableBatch: true, names: graphfake.DutchFolderNames}, "Postvak IN"},
	} {
		t.Run(v.name, func(t *testing.T) {
			t.Parallel()
			v.h.inbox = v.inbox
			mailboxtest.Run(t, v.h)
		})
	}
}

type graphHarness struct {
	g            *graphfake.Server
	discovery    string
	disableBatch bool
	names        map[string]string
	inbox        string
}

func (h graphHarness) Features() mailboxtest.Features {
	// The fake serves the stored bytes as they are; a move is one atomic
	// operation on the server.
	return mailboxtest.Features{CRLF: false, ExclusiveMove: true}
}

func (h graphHarness) New(t *testing.T, opts mailboxtest.FixtureOptions, msgs [][]byte) (mailbox.Source, mailboxtest.Fixture) {
	t.Helper()
	b := newBox(t, h.g, graphfake.MailboxOptions{FolderNames: h.names})
	b.folders.Import = h.inbox + "/Import"
	// A non-ASCII processed folder.
	b.folders.Processed = h.inbox + "/Verwerkt-Ä"
	b.folders.Error = h.inbox + "/Fout"
	b.folders.IncludeSubfolders = opts.IncludeSubfolders
	b.graph.Discovery = h.discovery
	b.graph.DisableBatch = h.disableBatch
	b.graph.PageSize = 3 // several pages even for small folders
	if opts.BadCredentials {
		b.tokens = staticTokens{tokOutlook} // a token for another resource
	}
	if opts.NoImport && len(msgs) > 0 {
		t.Fatalf("NoImport with %d messages", len(msgs))
	}
	if !opts.NoImport {
		h.g.CreateFolderPath(b.addr, b.folders.Import)
		for _, m := range msgs {
			b.add(b.folders.Import, m)
		}
	}
	if !opts.NoProcessed {
		h.g.CreateFolderPath(b.addr, b.folders.Processed)
	}
	if !opts.NoError {
		h.g.CreateFolderPath(b.addr, b.folders.Error)
	}
	fx := &fixture{b: b}
	return fx.NewSource(), fx
}

type fixture struct{ b *box }

var _ mailboxtest.SeenFixture = (*fixture)(nil)

func (f *fixture) Folders() mailboxtest.Folders {
	return mailboxtest.Folders{Import: f.b.folders.Import, Processed: f.b.folders.Processed, Error: f.b.folders.Error}
}

func (f *fixture) NewSource() mailbox.Source { return f.b.source() }

func (f *fixture) Exists(folder string) bool {
	_, ok := f.b.g.FolderID(f.b.addr, folder)
	return ok
}

func (f *fixture) Count(folder string) int { return f.b.g.Count(f.b.addr, folder) }

func (f *fixture) Bodies(folder string) [][]byte { return f.b.g.Bodies(f.b.addr, folder) }

func (f *fixture) Add(folder string, raw []byte) { f.b.add(folder, raw) }

func (f *fixture) Seen(folder string) []bool {
	var out []bool
	for _, m := range f.b.g.Messages(f.b.addr, folder) {
		out = append(out, m.IsRead)
	}
	return out
}
