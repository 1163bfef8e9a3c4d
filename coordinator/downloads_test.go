package coordinator_test

import (
	"bytes"
	"context"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
)

// get answers a GET of path on c with token (and a lease header if lease
// is not 0); the caller closes the body.
func (c *coord) get(ctx context.Context, token, path string, lease int64) *http.Response {
	c.t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.URL+path, nil)
	if err != nil {
		c.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if lease != 0 {
		req.Header.Set(api.LeaseHeader, strconv.FormatInt(lease, 10))
	}
	resp, err := (&http.Client{Transport: c.tr}).Do(req)
	if err != nil {
		c.t.Fatalf("GET %s: %v", path, err)
	}
	return resp
}

// wantDownload fails t unless resp is a 200 download offered as filename,
// not to be sniffed, shown inline or run.
func wantDownload(t *testing.T, what string, resp *http.Response, filename string) {
	t.Helper()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: status %d", what, resp.StatusCode)
	}
	h := resp.Header
	if got := h.Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("%s: X-Content-Type-Options = %q", what, got)
	}
	if got := h.Get("Content-Security-Policy"); got != "sandbox" {
		t.Errorf("%s: Content-Security-Policy = %q", what, got)
	}
	disp, params, err := mime.ParseMediaType(h.Get("Content-Disposition"))
	if err != nil || disp != "attachment" || params["filename"] != filename {
		t.Errorf("%s: Content-Disposition = %q (%s %v, %v), want attachment named %q", what, h.Get("Content-Disposition"), disp, params, err, filename)
	}
}

func TestDownloadsAreServedAsAttachmentsThatNoBrowserRuns(t *testing.T) {
	checkGoroutines(t)
	c := startCoord(t)
	ctx := context.Background()
	r, _ := c.Register("r", nil)
	runnerToken := r.Token
	src := tgz(t, "package.json", "{}")
	j, err := c.AdminClient().SubmitUpload(ctx, gitSpecOnly(), sha(src), bytes.NewReader(src))
	if err != nil {
		t.Fatal(err)
	}
	cl, _ := claimOne(t, r, time.Second)
	lease := cl.Lease.Token

	resp := c.get(ctx, runnerToken, "/v1/jobs/"+j.ID+"/source", lease)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	wantDownload(t, "source", resp, j.ID+".tar.gz")

	names := map[string]string{ // artifact → the file name offered
		"dist/app.js":               "app.js",
		"index.html":                "index.html",
		`dist/say "hi"; x=y.svg`:    `say "hi"; x=y.svg`,
		"dist/ünïcödé ✓.html":       "ünïcödé ✓.html",
		"reports/deep/er/sbom.json": "sbom.json",
	}
	for name := range names {
		body := "<script>alert(1)</script>"
		if _, err := r.UploadArtifact(ctx, j.ID, lease, name, api.KindFile, sha([]byte(body)), strings.NewReader(body)); err != nil {
			t.Fatalf("uploading %q: %v", name, err)
		}
	}
	for name, filename := range names {
		resp := c.get(ctx, c.Admin, "/v1/jobs/"+j.ID+"/artifacts/"+url.PathEscape(name), 0)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		wantDownload(t, "artifact "+name, resp, filename)
	}

	if _, err := r.AppendLog(ctx, j.ID, lease, 0, []byte("<html>first\n")); err != nil {
		t.Fatal(err)
	}
	logPath := "/v1/jobs/" + j.ID + "/log"
	for _, q := range []string{"", "?offset=3"} {
		resp := c.get(ctx, c.Admin, logPath+q, 0)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		wantDownload(t, "log"+q, resp, j.ID+".log")
	}

	// The follow stream: headers at once, then bytes as they come, until
	// the job ends.
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp = c.get(fctx, c.Admin, logPath+"?follow=1", 0)
	defer resp.Body.Close()
	wantDownload(t, "log follow", resp, j.ID+".log")
	first := make([]byte, len("<html>first\n"))
	if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != "<html>first\n" {
		t.Fatalf("follow: first bytes %q, %v", first, err)
	}
	if _, err := r.AppendLog(ctx, j.ID, lease, int64(len(first)), []byte("second\n")); err != nil {
		t.Fatal(err)
	}
	if err := r.Result(ctx, j.ID, api.ResultRequest{Token: lease, State: api.StateSucceeded, LogSize: int64(len(first)) + 7}); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(resp.Body); err != nil || string(rest) != "second\n" {
		t.Fatalf("follow: rest %q, %v", rest, err)
	}
}
