package mailjob

import "strings"

// Default names of the subjects, streams and bucket of the outbound
// contract. Each is configurable on the sender; take the real names from
// the deployment's configuration.
const (
	// DefaultJobsPrefix is the subject prefix of job messages:
	// <prefix>.<MailboxToken(from)>.
	DefaultJobsPrefix = "mailpipe.outbound.jobs"
	// DefaultStatusPrefix is the subject prefix of status events:
	// <prefix>.<StatusToken(job_id)>.
	DefaultStatusPrefix = "mailpipe.outbound.status"
	// DefaultDeadLetterPrefix is the subject prefix of dead letters: jobs
	// the sender gave up on, <prefix>.<last token of the job's subject>.
	DefaultDeadLetterPrefix = "mailpipe.outbound.deadletter"

	// DefaultJobsStream is the work-queue stream holding jobs until a
	// sender has handled them.
	DefaultJobsStream = "MAILPIPE_OUTBOUND"
	// DefaultStatusStream keeps status events (limits retention), so a
	// producer can look a job's history up by subject.
	DefaultStatusStream = "MAILPIPE_OUTBOUND_STATUS"
	// DefaultDeadLetterStream keeps dead letters for operators.
	DefaultDeadLetterStream = "MAILPIPE_OUTBOUND_DEADLETTER"

	// DefaultAttachmentBucket is the object store bucket the sender creates
	// for large attachments. Producers may use any bucket the sender can
	// read.
	DefaultAttachmentBucket = "mailpipe-attachments"
)

// MailboxToken is the subject token of a sender mailbox: the address with
// ASCII letters lower-cased, ASCII letters, digits, '-' and '_' kept, and
// every other character ('@', '.', '+', non-ASCII characters, ...)
// replaced by '_'. "Billing.EU@Example.com" becomes "billing_eu_example_com".
//
// The mapping is readable but not one-to-one ("a.b@x.com" and "a_b@x.com"
// share a token); the sender refuses allow-lists in which two mailboxes
// share one. Other languages: replace each Unicode code point outside
// [A-Za-z0-9_-] by '_', then lower-case A-Z.
func MailboxToken(address string) string {
	var b strings.Builder
	b.Grow(len(address))
	for _, r := range address {
		switch {
		case 'A' <= r && r <= 'Z':
			b.WriteRune(r + ('a' - 'A'))
		case 'a' <= r && r <= 'z', '0' <= r && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

// Subject is the subject a job from the mailbox from is published on:
// prefix + "." + MailboxToken(from). An empty prefix means
// DefaultJobsPrefix.
func Subject(prefix, from string) string {
	if prefix == "" {
		prefix = DefaultJobsPrefix
	}
	return prefix + "." + MailboxToken(from)
}

// StatusToken is the subject token of a job's status events: the job_id
// with every '.' replaced by '_' (the other characters a job_id may
// contain are valid in a subject token). Job ids that differ only in '.'
// versus '_' share a token: status events carry the job_id, and
// WatchStatus checks it.
func StatusToken(jobID string) string {
	return strings.ReplaceAll(jobID, ".", "_")
}

// StatusSubject is the subject of a job's status events: prefix + "." +
// StatusToken(jobID). An empty prefix means DefaultStatusPrefix.
func StatusSubject(prefix, jobID string) string {
	if prefix == "" {
		prefix = DefaultStatusPrefix
	}
	return prefix + "." + StatusToken(jobID)
}

// DeadLetterSubject is the subject of the dead letter of a job that was
// published on jobSubject: prefix + "." + the last token of jobSubject. An
// empty prefix means DefaultDeadLetterPrefix.
func DeadLetterSubject(prefix, jobSubject string) string {
	if prefix == "" {
		prefix = DefaultDeadLetterPrefix
	}
	return prefix + "." + jobSubject[strings.LastIndexByte(jobSubject, '.')+1:]
}
