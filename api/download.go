package api

import (
	"mime"
	"net/http"
)

// SetDownloadHeaders marks an answer as a file to save, never a page to show:
// a browser that opens it on the coordinator's origin (where the console's
// sessions live) must not sniff it into HTML, display it inline, or run
// anything in it. filename is offered as the name to save under (encoded
// by mime.FormatMediaType: quoted, or RFC 2231 for anything not plain
// ASCII).
func SetDownloadHeaders(h http.Header, filename string) {
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "sandbox")
	cd := ""
	if filename != "" {
		cd = mime.FormatMediaType("attachment", map[string]string{"filename": filename})
	}
	if cd == "" {
		cd = "attachment"
	}
	h.Set("Content-Disposition", cd)
}
