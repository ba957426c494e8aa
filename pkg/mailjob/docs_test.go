package mailjob

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestDocs keeps docs/jobs.md honest: its example jobs are valid, its
// example status events parse, and it lists every reason code, subject
// default and header name.
func TestDocs(t *testing.T) {
	data, err := os.ReadFile("../../docs/jobs.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	sv := newSchemaValidator(t, StatusSchema())
	blocks := regexp.MustCompile("(?s)```json\n(.*?)```").FindAllStringSubmatch(doc, -1)
	var jobs, events int
	for _, b := range blocks {
		text := strings.TrimSpace(b[1])
		switch {
		case strings.HasPrefix(text, `{"job_id"`) && strings.Contains(text, `"type":`):
			events++
			if ok, errs := schemaAccepts(sv, []byte(text)); !ok {
				t.Errorf("status example: %v\n%s", errs, text)
			}
		case strings.Contains(text, `"job_id"`):
			jobs++
			if _, err := ValidateJSON([]byte(text), DefaultLimits); err != nil {
				t.Errorf("job example: %v\n%s", err, text)
			}
		}
	}
	if jobs < 2 || events < 2 {
		t.Errorf("found %d job and %d status examples", jobs, events)
	}
	for _, code := range ReasonCodes {
		if !strings.Contains(doc, "| `"+code+"` |") {
			t.Errorf("reason code %s is not in the table", code)
		}
	}
	for _, s := range []string{
		DefaultJobsStream, DefaultStatusStream, DefaultDeadLetterStream, DefaultAttachmentBucket,
		DefaultJobsPrefix, DefaultStatusPrefix, DefaultDeadLetterPrefix, TypeJob, TypeStatus, TypeDeadLetter,
		HeaderJobID, HeaderStatus, HeaderReason, HeaderReasonCode, HeaderMsgID,
	} {
		if !strings.Contains(doc, s) {
			t.Errorf("docs/jobs.md does not mention %s", s)
		}
	}
}
