package app

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestDemo runs `make demo` in-process: the importer imports the sample
// invoices, then the sender replies to the first one through the dev SMTP
// server.
func TestDemo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := Demo(ctx, t.TempDir(), &out); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	s := out.String()
	for _, re := range []string{
		`all checks passed|ok +send as facturen@demo\.mailpipe\.test`,
		`job ap-reply-[0-9a-f]{12}: queued on mailpipe\.outbound\.jobs\.facturen_demo_mailpipe_test`,
		`job ap-reply-[0-9a-f]{12}: duplicate`,
		`accepted attempt 1`,
		`sent +attempt 1 +<mailpipe\.ap-reply-[0-9a-f]{12}@demo\.mailpipe\.test>`,
		`facturen@demo\.mailpipe\.test +Sent Items 1 message`,
		`boekhouding@demo\.mailpipe\.test +INBOX +1 message`,
		`Subject: Re: Factuur`,
	} {
		if !regexp.MustCompile(re).MatchString(s) {
			t.Errorf("demo output lacks %s", re)
		}
	}
	if t.Failed() {
		t.Logf("output:\n%s", s)
	}
	if strings.Contains(s, "FAIL") {
		t.Errorf("a check failed:\n%s", s)
	}
}
