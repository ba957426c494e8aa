// Package schemas holds the JSON Schemas of mailpipe's outbound contract
// (docs/jobs.md), for programs in any language and, embedded, for Go.
package schemas

import _ "embed"

// MailJobV1 is the JSON Schema (draft 2020-12) of an outbound mail job,
// the payload of com.mailpipe.job.submitted.v1 messages.
//
//go:embed mail-job.v1.json
var MailJobV1 []byte

// MailJobStatusV1 is the JSON Schema (draft 2020-12) of a status event,
// the payload of com.mailpipe.job.status.v1 messages.
//
//go:embed mail-job-status.v1.json
var MailJobStatusV1 []byte
