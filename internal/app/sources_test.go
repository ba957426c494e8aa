package app

import "testing"

// Tokens are per resource and per cloud: the scope must follow the
// authority host (IMAP) or the Graph base URL.
func TestCloudScopes(t *testing.T) {
	for _, c := range []struct{ authority, app, delegated string }{
		{"login.microsoftonline.com", "https://outlook.office365.com/.default", "https://outlook.office.com/IMAP.AccessAsUser.All"},
		{"login.microsoftonline.us", "https://outlook.office365.us/.default", "https://outlook.office365.us/IMAP.AccessAsUser.All"},
		{"login.chinacloudapi.cn", "https://partner.outlook.cn/.default", "https://partner.outlook.cn/IMAP.AccessAsUser.All"},
		{"127.0.0.1:8443", "https://outlook.office365.com/.default", "https://outlook.office.com/IMAP.AccessAsUser.All"},
	} {
		if got := imapScope(c.authority); got != c.app {
			t.Errorf("imapScope(%s) = %s, want %s", c.authority, got, c.app)
		}
		if got := imapDelegatedScope(c.authority); got != c.delegated {
			t.Errorf("imapDelegatedScope(%s) = %s, want %s", c.authority, got, c.delegated)
		}
	}
	for base, want := range map[string]string{
		"https://graph.microsoft.com/v1.0":             "https://graph.microsoft.com",
		"https://graph.microsoft.us/v1.0":              "https://graph.microsoft.us",
		"https://dod-graph.microsoft.us/v1.0":          "https://dod-graph.microsoft.us",
		"https://microsoftgraph.chinacloudapi.cn/v1.0": "https://microsoftgraph.chinacloudapi.cn",
		"https://127.0.0.1:9443/v1.0":                  "https://graph.microsoft.com",
	} {
		if got := graphResource(base); got != want {
			t.Errorf("graphResource(%s) = %s, want %s", base, got, want)
		}
	}
}
