package importer

import (
	"bufio"
	"bytes"
	"io"
	"mime"
	"net/mail"
	"strings"

	"github.com/emersion/go-message/charset"
)

// maxHeaderBytes bounds how much of a message is read to find its header.
const maxHeaderBytes = 256 << 10

var wordDecoder = &mime.WordDecoder{CharsetReader: charset.Reader}

// headerFields are the mail header fields published as metadata.
type headerFields struct {
	MessageID, From, Subject, Date string
}

// parseHeader reads the header fields from the start of a raw message. It
// is best effort: a message without a parseable header (empty, binary)
// yields empty fields, never an error, because the raw bytes are published
// as they are.
func parseHeader(head []byte) headerFields {
	m, err := mail.ReadMessage(bufio.NewReader(bytes.NewReader(head)))
	if err != nil && m == nil {
		return headerFields{}
	}
	h := m.Header
	return headerFields{
		MessageID: strings.TrimSpace(h.Get("Message-Id")),
		From:      decodeWords(h.Get("From")),
		Subject:   decodeWords(h.Get("Subject")),
		Date:      strings.TrimSpace(h.Get("Date")),
	}
}

func decodeWords(s string) string {
	if d, err := wordDecoder.DecodeHeader(s); err == nil {
		return strings.TrimSpace(d)
	}
	return strings.TrimSpace(s)
}

// headerEnd returns the length of the header block in b (up to and
// including the blank line), or -1 when b holds no complete header.
func headerEnd(b []byte) int {
	if len(b) == 0 {
		return 0
	}
	// A message starting with an empty line has an empty header.
	if b[0] == '\n' {
		return 1
	}
	if len(b) > 1 && b[0] == '\r' && b[1] == '\n' {
		return 2
	}
	if i := bytes.Index(b, []byte("\r\n\r\n")); i >= 0 {
		if j := bytes.Index(b[:i+4], []byte("\n\n")); j >= 0 {
			return j + 2
		}
		return i + 4
	}
	if i := bytes.Index(b, []byte("\n\n")); i >= 0 {
		return i + 2
	}
	return -1
}

// readHead reads up to maxHeaderBytes from r and returns the bytes read
// (the header and possibly the beginning of the body) plus the rest of r.
func readHead(r io.Reader) ([]byte, io.Reader, error) {
	buf := make([]byte, 0, 16<<10)
	for len(buf) < maxHeaderBytes {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if headerEnd(buf) >= 0 {
			break
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, nil, err
		}
	}
	return buf, r, nil
}
