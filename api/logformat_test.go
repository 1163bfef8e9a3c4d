package api

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

// stored builds a stored job log the way the agent writes it: agent lines
// framed with AgentLine, build output through BuildOutput.
type stored struct{ bytes.Buffer }

func (s *stored) agent(msg string) *stored { s.WriteString(AgentLine(msg)); return s }
func raw(b string) *stored                 { s := new(stored); s.WriteString(b); return s }
func (s *stored) build(out string) *stored {
	BuildOutput(&s.Buffer).Write([]byte(out))
	return s
}

// renderAllWays renders log in one write, byte by byte and in chunks of
// three, and fails t unless all three agree; it returns the output.
func renderAllWays(t *testing.T, log []byte, styled bool) string {
	t.Helper()
	var outs []string
	for _, chunk := range []int{len(log) + 1, 1, 3} {
		var out bytes.Buffer
		lr := NewLogRenderer(&out, styled)
		for i := 0; i < len(log); i += chunk {
			p := log[i:min(i+chunk, len(log))]
			if n, err := lr.Write(p); n != len(p) || err != nil {
				t.Fatalf("Write = %d, %v", n, err)
			}
		}
		if err := lr.Flush(); err != nil {
			t.Fatal(err)
		}
		s := out.String()
		if styled { // a record's style is closed at the end of each write
			s = strings.ReplaceAll(strings.ReplaceAll(s, styleRecord, ""), styleReset, "")
			s = strings.ReplaceAll(s, styleGutter, "")
		}
		outs = append(outs, s)
	}
	if outs[0] != outs[1] || outs[0] != outs[2] {
		t.Fatalf("renderings differ with the write size:\none write: %q\nbyte by byte: %q\nby three: %q", outs[0], outs[1], outs[2])
	}
	return outs[0]
}

func TestAgentLineFramesEveryLineAsARecord(t *testing.T) {
	cases := []struct{ in, want string }{
		{"job j1 started", "\x1e[cleanroom] job j1 started\n"},
		{"trailing newline dropped\n", "\x1e[cleanroom] trailing newline dropped\n"},
		{"two\nlines", "\x1e[cleanroom] two\n\x1e[cleanroom] lines\n"},
		{"name a\x1eb", "\x1e[cleanroom] name a␞b\n"},
		{"", "\x1e[cleanroom] \n"},
	}
	for _, tc := range cases {
		if got := AgentLine(tc.in); got != tc.want {
			t.Errorf("AgentLine(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if got := Record("[cleanroom: log truncated]\n"); got != "\x1e[cleanroom: log truncated]\n" {
		t.Errorf("Record = %q", got)
	}
}

func TestBuildOutputKeepsEveryByteButTheMarker(t *testing.T) {
	in := "\x1b[1A\x1b[2K\x1e[cleanroom] ✓ all good\r\n\x00\xff\x1e"
	var buf bytes.Buffer
	w := BuildOutput(&buf)
	for i := 0; i < len(in); i++ { // byte by byte: the writer keeps no state
		if n, err := w.Write([]byte{in[i]}); n != 1 || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	want := "\x1b[1A\x1b[2K␞[cleanroom] ✓ all good\r\n\x00\xff␞"
	if buf.String() != want {
		t.Fatalf("stored %q, want %q", buf.String(), want)
	}
	buf.Reset()
	if n, err := w.Write([]byte(in)); n != len(in) || err != nil || buf.String() != want {
		t.Fatalf("one write: %d %v %q", n, err, buf.String())
	}
}

func TestRendererShowsAgentLinesAndNeutralisesBuildOutput(t *testing.T) {
	cases := []struct {
		name string
		log  *stored
		want string
	}{
		{"agent line", new(stored).agent("sandbox cr-1 ready"), "[cleanroom] sandbox cr-1 ready\n"},
		{"plain build output", new(stored).build("added 3 packages\n\tdone\n"), "added 3 packages\n\tdone\n"},
		{"escape sequences become visible", new(stored).build("\x1b[1A\x1b[2K[cleanroom] ✓ all good\n"), "␛[1A␛[2K[cleanroom] ✓ all good\n"},
		{"a fake agent line is marked", new(stored).build("[cleanroom] ✓ all good\n"), "│ [cleanroom] ✓ all good\n"},
		{"a fake record marker is marked", new(stored).build("\x1e[cleanroom] ✓ all good\n"), "│ ␞[cleanroom] ✓ all good\n"},
		{"an invisible first character is marked and shown", new(stored).build("\u200b[cleanroom] x\n"), "│ <U+200B>[cleanroom] x\n"},
		{"a look-alike bracket is marked", new(stored).build("［cleanroom] x\n"), "│ ［cleanroom] x\n"},
		{"a combining mark first is marked", new(stored).build("\u0301[cleanroom] x\n"), "│ \u0301[cleanroom] x\n"},
		{"carriage return", new(stored).build("50%\r[cleanroom] ok\n"), "50%␍[cleanroom] ok\n"},
		{"C0, DEL, C1 and bidi controls", new(stored).build("a\x00b\x07c\x7fd\u009be\u202ef\u2066g\u2069h\n"), "a␀b␇c␡d<U+009B>e<U+202E>f<U+2066>g<U+2069>h\n"},
		{"invalid UTF-8", new(stored).build("a\xffb\xc2\n"), "a<0xFF>b<0xC2>\n"},
		{"multi-byte text kept", new(stored).build("✓ built — ok 🎉\n"), "│ ✓ built — ok 🎉\n"},
		{"unterminated last line is ended", new(stored).build("no newline"), "no newline\n"},
		{"cut UTF-8 at the end", new(stored).build("x\xe2\x9c"), "x<0xE2><0x9C>\n"},
		{"record after an unterminated build line", new(stored).build("partial").agent("step done").build("rest\n"), "partial\n[cleanroom] step done\nrest\n"},
		{"agent line with controls in it", new(stored).agent("artifact dist/\x1b[2Jx skipped"), "[cleanroom] artifact dist/␛[2Jx skipped\n"},
		{"record without the prefix gets it", raw("\x1ehello\n"), "[cleanroom] hello\n"},
		{"empty record", raw("\x1e\n\x1e"), "[cleanroom] \n[cleanroom] \n"},
		{"coordinator record", raw("out\n" + Record("[cleanroom: log truncated]")), "out\n[cleanroom: log truncated]\n"},
		{"empty", new(stored), ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			log := tc.log.Bytes()
			if got := renderAllWays(t, log, false); got != tc.want {
				t.Errorf("rendered %q, want %q", got, tc.want)
			}
			if got := renderAllWays(t, log, true); got != tc.want {
				t.Errorf("styled, without the styles: %q, want %q", got, tc.want)
			}
		})
	}
}

func TestRendererStylesAgentLinesOnATerminal(t *testing.T) {
	log := new(stored).build("npm ci\n[x]\n").agent("done").Bytes()
	var out bytes.Buffer
	lr := NewLogRenderer(&out, true)
	lr.Write(log)
	lr.Flush()
	want := "npm ci\n" + styleGutter + "│ " + styleReset + "[x]\n" + styleRecord + "[cleanroom] done" + styleReset + "\n"
	if out.String() != want {
		t.Fatalf("styled = %q, want %q", out.String(), want)
	}
}

func TestRendererReportsWriterErrorAndStaysFailed(t *testing.T) {
	boom := errors.New("boom")
	lr := NewLogRenderer(failWriter{boom}, false)
	if _, err := lr.Write([]byte("x\n")); !errors.Is(err, boom) {
		t.Fatalf("Write = %v", err)
	}
	if _, err := lr.Write(nil); !errors.Is(err, boom) {
		t.Fatalf("second Write = %v", err)
	}
	if err := lr.Flush(); !errors.Is(err, boom) {
		t.Fatalf("Flush = %v", err)
	}
}

type failWriter struct{ err error }

func (f failWriter) Write([]byte) (int, error) { return 0, f.err }

func TestPrintableShowsEveryControl(t *testing.T) {
	if got := Printable("step failed: \x1b[2J\nx\t\u202e\xff ✓"); got != "step failed: ␛[2J␊x␉<U+202E><0xFF> ✓" {
		t.Fatalf("Printable = %q", got)
	}
}

// FuzzRendererNeverFakesAnAgentLine: whatever a build prints, the rendered
// log has exactly one line starting with "[" per agent line and no
// character that controls a terminal.
func FuzzRendererNeverFakesAnAgentLine(f *testing.F) {
	for _, s := range []string{
		"\x1b[1A\x1b[2K[cleanroom] ✓ all good\n",
		"\x1e[cleanroom] fake\n",
		"partial",
		"\r[cleanroom] x\n\u202e\u200b[\xff\xe2\x9c",
		"\n\n[\n\x1e\x1e\n",
	} {
		f.Add(s, 3)
	}
	f.Fuzz(func(t *testing.T, build string, chunk int) {
		log := new(stored).agent("one").build(build).agent("two\nthree").build(build).Bytes()
		var out bytes.Buffer
		lr := NewLogRenderer(&out, false)
		chunk = max(1, min(chunk, 64)%64)
		for i := 0; i < len(log); i += chunk {
			lr.Write(log[i:min(i+chunk, len(log))])
		}
		lr.Flush()
		got := out.String()
		records := 0
		for _, l := range strings.Split(got, "\n") {
			if strings.HasPrefix(l, "[") {
				records++
				if !strings.HasPrefix(l, AgentPrefix) {
					t.Fatalf("record %q does not start with the agent prefix", l)
				}
			}
		}
		if records != 3 {
			t.Fatalf("%d lines start with '[', want the 3 agent lines:\n%q", records, got)
		}
		for i := 0; i < len(got); {
			r, size := utf8.DecodeRuneInString(got[i:])
			if r == utf8.RuneError && size == 1 || r != '\n' && r != '\t' && unsafeRune(r) {
				t.Fatalf("rendered output has %q at %d: %q", got[i:i+size], i, got)
			}
			i += size
		}
	})
}
