// Package browsertest owns driving a real headless Chromium from tests
// (Debian's chromium, through chromedp): starting it for one test, keeping
// what its pages print to the console, downloading files the way a user
// does, and saving screenshots to the test-output directory.
package browsertest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/chromedp"

	"github.com/cleanroom-ci/cleanroom/internal/testutil"
)

// Browser is one headless Chromium with one tab, ended with the test.
type Browser struct {
	// Ctx runs chromedp actions in the tab.
	Ctx context.Context
	t   testing.TB

	mu       sync.Mutex
	messages []chromedp.ConsoleMessage
}

// New starts Chromium for t (gated on the chromium command: make deps
// installs it, and under CI=true a missing one fails the test). The browser
// and its profile are gone when the test ends.
func New(t testing.TB) *Browser {
	t.Helper()
	testutil.RequiresCommands(t, "chromium")
	opts := append(slices.Clone(chromedp.DefaultExecAllocatorOptions[:]),
		chromedp.ExecPath("chromium"),
		chromedp.Headless,
		chromedp.DisableGPU,
		chromedp.WindowSize(1400, 1000),
		chromedp.Flag("lang", "en-US"),
	)
	if os.Geteuid() == 0 {
		// Chromium refuses to start as root with its sandbox on (it needs
		// an unprivileged user for its namespaces); the tests run as root,
		// so the browser runs without it. It only ever loads the local
		// console under test.
		opts = append(opts, chromedp.NoSandbox)
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 5*time.Minute)
	b := &Browser{Ctx: ctx, t: t}
	messages := chromedp.Console(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range messages {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.messages = append(b.messages, m)
			b.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancelTimeout()
		cancel()
		cancelAlloc()
		<-done
	})
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return b
}

// Do runs actions, failing the test on an error.
func (b *Browser) Do(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	if err := chromedp.Do(b.Ctx, actions...); err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
}

// Run runs one action and returns its value, failing the test on an error.
func Run[T any](b *Browser, what string, a chromedp.Action[T]) T {
	b.t.Helper()
	v, err := chromedp.Run(b.Ctx, a)
	if err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
	return v
}

// Console returns what the pages printed to the console so far: calls of
// the console API, uncaught exceptions, and the browser's own log (a
// Content-Security-Policy violation is an entry of source "security" or
// "other" saying so).
func (b *Browser) Console() []chromedp.ConsoleMessage {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.messages)
}

// Download runs trigger (a click on a link to a file), lets Chromium save
// the file as a user's download, and returns its content.
func (b *Browser) Download(what string, trigger chromedp.Action[chromedp.Void]) []byte {
	b.t.Helper()
	dir := b.t.TempDir()
	enabled := true
	if _, err := chromedp.CallBrowser(b.Ctx, browser.SetDownloadBehavior, browser.SetDownloadBehaviorParams{
		Behavior: browser.SetDownloadBehaviorBehaviorAllowAndName, DownloadPath: dir, EventsEnabled: &enabled}); err != nil {
		b.t.Fatalf("%s: allowing downloads: %v", what, err)
	}
	ctx, cancel := context.WithTimeout(b.Ctx, 30*time.Second)
	defer cancel()
	progress := chromedp.BrowserEvents(ctx, browser.DownloadProgress)
	if err := chromedp.Do(ctx, trigger); err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
	for ev, err := range progress {
		if err != nil {
			b.t.Fatalf("%s: waiting for the download: %v", what, err)
		}
		switch ev.State {
		case browser.DownloadProgressStateCompleted:
			data, err := os.ReadFile(filepath.Join(dir, ev.GUID))
			if err != nil {
				b.t.Fatalf("%s: reading the download: %v", what, err)
			}
			return data
		case browser.DownloadProgressStateCanceled:
			b.t.Fatalf("%s: the download was canceled", what)
		}
	}
	b.t.Fatalf("%s: no download", what)
	return nil
}

// Screenshot saves a PNG of the whole page as OutputDir/name.png.
func (b *Browser) Screenshot(name string) string {
	b.t.Helper()
	png := Run(b, "taking screenshot "+name, chromedp.FullScreenshot(100))
	path := filepath.Join(OutputDir(b.t), name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatalf("saving screenshot: %v", err)
	}
	b.t.Logf("screenshot %s", path)
	return path
}

// OutputDir is where tests leave artifacts for people to look at:
// $CLEANROOM_TEST_OUTPUT, else .work/test-output in the checkout (make test
// keeps it; CI can upload it).
func OutputDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("CLEANROOM_TEST_OUTPUT")
	if dir == "" {
		root, err := repoRoot()
		if err != nil {
			t.Fatalf("finding the checkout for test output: %v", err)
		}
		dir = filepath.Join(root, ".work", "test-output")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("creating %s: %v", dir, err)
	}
	return dir
}

// repoRoot is the nearest directory up from the working directory that
// holds go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// CSPViolations returns the console entries in which Chromium reports
// that the Content-Security-Policy refused something.
func CSPViolations(ms []chromedp.ConsoleMessage) []string {
	var out []string
	for _, m := range ms {
		if strings.Contains(m.Text, "Content Security Policy") {
			out = append(out, fmt.Sprintf("%s (%s)", m.Text, m.Source))
		}
	}
	return out
}

// Eval evaluates a JavaScript expression in the page (from DevTools, so
// the page's CSP does not apply to it) and returns its value.
func Eval[T any](b *Browser, expr string) T {
	b.t.Helper()
	return Run(b, "evaluating "+expr, chromedp.Evaluate[T](expr))
}

// WaitFor polls a JavaScript predicate until it is true (at most within).
func (b *Browser) WaitFor(what, predicate string, within time.Duration) {
	b.t.Helper()
	if _, err := chromedp.Run(b.Ctx, chromedp.Poll[chromedp.Void](predicate, chromedp.WithPollingTimeout(within), chromedp.WithPollingInterval(100*time.Millisecond))); err != nil {
		b.t.Fatalf("waiting for %s (%s): %v", what, predicate, err)
	}
}

// Open navigates to url and returns the HTTP status of the page.
func (b *Browser) Open(url string) int64 {
	b.t.Helper()
	resp := Run(b, "opening "+url, chromedp.NavigateResponse(url))
	return resp.Status
}

// Submit clicks a form's button (a navigation) and returns the status of
// the page it leads to.
func (b *Browser) Submit(what string, button chromedp.CSS) int64 {
	b.t.Helper()
	resp, err := chromedp.RunResponse(b.Ctx, chromedp.Click(button))
	if err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
	return resp.Status
}

// Exceptions returns the uncaught exceptions among ms.
func Exceptions(ms []chromedp.ConsoleMessage) []string {
	var out []string
	for _, m := range ms {
		if m.IsException() {
			out = append(out, m.Text)
		}
	}
	return out
}
