// Command sender will consume outbound mail jobs from JetStream and send
// them through Microsoft Graph as a shared mailbox. It is not part of this
// version: it says so and exits non-zero rather than pretending to work.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "sender: not available in this version of mailpipe (the importer is: see `importer --help`)")
	os.Exit(2)
}
