package auth

import (
	"encoding/json"
	"testing"
	"time"
)

func at(secret string, expires int64) map[string]any {
	return map[string]any{"secret": secret, "target": "s", "cached_at": "1700000000", "expires_on": itoa(expires)}
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }

func cacheJSON(t *testing.T, sections map[string]map[string]any) []byte {
	t.Helper()
	b, err := json.Marshal(sections)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDelegatedMergeCaches(t *testing.T) {
	base := cacheJSON(t, map[string]map[string]any{
		"RefreshToken": {"rt": map[string]any{"secret": "RT0"}},
		"AccessToken":  {"imap": at("A0", 1700003600), "graph": at("G0", 1700003600), "old": at("O0", 1700003600)},
		"Account":      {"acc": map[string]any{"username": "svc@x"}},
	})
	// This replica refreshed IMAP (new RT, new IMAP token) and MSAL dropped
	// nothing else.
	ours := cacheJSON(t, map[string]map[string]any{
		"RefreshToken": {"rt": map[string]any{"secret": "RT1-ours"}},
		"AccessToken":  {"imap": at("A1", 1700007200), "graph": at("G0", 1700003600), "old": at("O0", 1700003600)},
		"Account":      {"acc": map[string]any{"username": "svc@x"}},
	})
	// Meanwhile another replica refreshed Graph and IMAP (shorter-lived),
	// dropped "old" and added an entry.
	theirs := cacheJSON(t, map[string]map[string]any{
		"RefreshToken": {"rt": map[string]any{"secret": "RT1-theirs"}},
		"AccessToken":  {"imap": at("A1-theirs", 1700005000), "graph": at("G1", 1700007200), "new": at("N1", 1700007200)},
		"Account":      {"acc": map[string]any{"username": "svc@x"}},
		"AppMetadata":  {"app": map[string]any{"client_id": "c"}},
	})
	merged, err := mergeCaches(base, ours, theirs)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]map[string]map[string]any
	if err := json.Unmarshal(merged, &m); err != nil {
		t.Fatal(err)
	}
	secret := func(sec, k string) any {
		if e, ok := m[sec][k]; ok {
			return e["secret"]
		}
		return nil
	}
	checks := []struct {
		sec, key string
		want     any
		why      string
	}{
		{"RefreshToken", "rt", "RT1-ours", "our new refresh token is unused: it wins"},
		{"AccessToken", "imap", "A1", "both renewed: the longer-lived one"},
		{"AccessToken", "graph", "G1", "untouched by us: the newer stored one"},
		{"AccessToken", "old", nil, "removed by them, untouched by us: stays removed"},
		{"AccessToken", "new", "N1", "added by them: kept"},
	}
	for _, c := range checks {
		if got := secret(c.sec, c.key); got != c.want {
			t.Errorf("%s/%s = %v, want %v (%s)", c.sec, c.key, got, c.want, c.why)
		}
	}
	if m["AppMetadata"]["app"] == nil || m["Account"]["acc"] == nil {
		t.Errorf("sections lost: %s", merged)
	}

	// Nothing changed on our side: the stored cache as it is.
	same, err := mergeCaches(base, base, theirs)
	if err != nil || !sameJSON(same, theirs) {
		t.Errorf("no changes of ours: got %s", same)
	}
}

func TestDelegatedStripDueAndRejected(t *testing.T) {
	now := time.Unix(1700000000, 0)
	a := &cacheAdapter{now: func() time.Time { return now }}
	msal := cacheJSON(t, map[string]map[string]any{"AccessToken": {
		"fresh":    map[string]any{"secret": "F", "cached_at": itoa(now.Unix() - 60), "expires_on": itoa(now.Unix() + 3500)},
		"due":      map[string]any{"secret": "D", "cached_at": itoa(now.Unix() - 3300), "expires_on": itoa(now.Unix() + 300)},
		"rejected": map[string]any{"secret": "R", "cached_at": itoa(now.Unix() - 60), "expires_on": itoa(now.Unix() + 3500)},
	}})
	a.reject(Token{Value: "R", ExpiresOn: now.Add(time.Hour)})
	out := a.strip(msal)
	var m map[string]map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatal(err)
	}
	if len(m["AccessToken"]) != 1 || m["AccessToken"]["fresh"] == nil {
		t.Errorf("after strip: %s", out)
	}
}
