package mailjob

// Header names of job messages, status events and dead letters. NATS
// header keys are case-sensitive: these are the exact spellings on the
// wire. docs/jobs.md describes each.
const (
	// CloudEvents attributes (binary content mode).
	HeaderSpecVersion     = "ce-specversion"
	HeaderID              = "ce-id"
	HeaderSource          = "ce-source"
	HeaderType            = "ce-type"
	HeaderTime            = "ce-time"
	HeaderDataContentType = "ce-datacontenttype"
	HeaderCESubject       = "ce-subject"

	// HeaderMsgID is the JetStream de-duplication id: the job_id on jobs,
	// ce-id on status events and dead letters.
	HeaderMsgID = "Nats-Msg-Id"

	// Status events: the job and the event type, so that they can be
	// routed without parsing the payload.
	HeaderJobID  = "Mailpipe-Job-Id"
	HeaderStatus = "Mailpipe-Status"

	// Dead letters: why the sender gave up (text for humans) and the
	// reason code.
	HeaderReason     = "Mailpipe-Reason"
	HeaderReasonCode = "Mailpipe-Reason-Code"
)

// Values of the CloudEvents attributes.
const (
	SpecVersion = "1.0"
	// TypeJob is the ce-type of job messages.
	TypeJob = "com.mailpipe.job.submitted.v1"
	// TypeStatus is the ce-type of status events.
	TypeStatus = "com.mailpipe.job.status.v1"
	// TypeDeadLetter is the ce-type of dead letters (the job message as
	// received, with this type and the reason headers).
	TypeDeadLetter = "com.mailpipe.job.deadletter.v1"
	// ContentTypeJSON is ce-datacontenttype of jobs and status events.
	ContentTypeJSON = "application/json"
	// DefaultSource is ce-source of jobs published without WithSource.
	DefaultSource = "/mailpipe/producer"
	// StatusSourcePrefix is followed by the mailbox token in ce-source of
	// status events.
	StatusSourcePrefix = "/mailpipe/sender/"
	// DeadLetterIDPrefix prefixes ce-id and Nats-Msg-Id of dead letters.
	DeadLetterIDPrefix = "dl-"
)
