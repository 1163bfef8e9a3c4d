package browsertest

import (
	"net/http"

	"github.com/chromedp/chromedp"
)

// SignIn signs in to the cleanroom console at base with token through its
// form, as a person would, and fails the test unless the jobs list opens.
func (b *Browser) SignIn(base, token string) {
	b.t.Helper()
	if status := b.Open(base + "/ui/jobs"); status != http.StatusOK {
		b.t.Fatalf("opening the console: status %d", status)
	}
	b.Do("filling the sign-in form", chromedp.WaitVisible(chromedp.ID("token")), chromedp.SetValue(chromedp.ID("token"), token))
	if status := b.Submit("signing in", chromedp.CSS("section.signin button[type=submit]")); status != http.StatusOK {
		b.t.Fatalf("signing in: status %d", status)
	}
	b.Do("waiting for the jobs list", chromedp.WaitVisible(chromedp.ID("jobs")))
}

// SignOut presses the console's sign-out button.
func (b *Browser) SignOut() {
	b.t.Helper()
	b.Submit("signing out", chromedp.CSS("form.signout button"))
	b.Do("waiting for the sign-in form", chromedp.WaitVisible(chromedp.ID("token")))
}
