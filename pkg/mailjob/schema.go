package mailjob

import (
	"bytes"

	"github.com/mailpipe/mailpipe/schemas"
)

// Schema returns the JSON Schema (draft 2020-12) of a job, the file
// schemas/mail-job.v1.json. A job that ParseJob and Validate accept is
// valid under the schema; they also check what a schema cannot express:
// the limits of Limits, internationalized domain names, header names that
// differ only in case, unique content ids, repeated JSON keys.
func Schema() []byte { return bytes.Clone(schemas.MailJobV1) }

// StatusSchema returns the JSON Schema of a status event, the file
// schemas/mail-job-status.v1.json.
func StatusSchema() []byte { return bytes.Clone(schemas.MailJobStatusV1) }
