package registry

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// AddUser creates a Verdaccio user with the CouchDB-style call npm adduser
// makes (`PUT /-/user/org.couchdb.user:NAME`; npm adduser itself wants a
// terminal) and returns the user's token. Only PublisherUser may publish;
// reads need no user at all ($all).
func (r *Registry) AddUser(ctx context.Context, name, password string) (string, error) {
	body, _ := json.Marshal(map[string]any{
		"_id":      "org.couchdb.user:" + name,
		"name":     name,
		"password": password,
		"type":     "user",
		"roles":    []string{},
		"date":     time.Now().UTC().Format(time.RFC3339),
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodPut,
		r.URL+"-/user/org.couchdb.user:"+url.PathEscape(name), bytes.NewReader(body))
	if err != nil {
		return "", fmt.Errorf("creating user %s: %w", name, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("creating user %s: %w", name, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("creating user %s: status %d: %s", name, resp.StatusCode, trimJSONError(b))
	}
	var out struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(b, &out); err != nil || out.Token == "" {
		return "", fmt.Errorf("creating user %s: no token in answer %q", name, trimJSONError(b))
	}
	return out.Token, nil
}

// WriteNpmrc writes an npm user config at path that points npm at this
// registry (as registryURL, "" meaning r.URL) and, when token is not
// empty, authenticates with it: `//HOST:PORT/:_authToken=TOKEN`. Pass it
// with --userconfig so npm never reads the machine's own ~/.npmrc.
func (r *Registry) WriteNpmrc(path, registryURL, token string) error {
	if registryURL == "" {
		registryURL = r.URL
	}
	u, err := url.Parse(registryURL)
	if err != nil {
		return fmt.Errorf("parsing registry url %q: %w", registryURL, err)
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "registry=%s\n", registryURL)
	sb.WriteString("fund=false\naudit=false\nupdate-notifier=false\n")
	if token != "" {
		fmt.Fprintf(&sb, "//%s%s:_authToken=%s\n", u.Host, strings.TrimSuffix(u.Path, "/")+"/", token)
	}
	if err := os.WriteFile(path, []byte(sb.String()), 0o600); err != nil {
		return fmt.Errorf("writing npmrc %s: %w", path, err)
	}
	return nil
}

// randomPassword returns a throw-away password for harness-made users.
func randomPassword() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
