package api

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"unicode"
	"unicode/utf8"
)

// A job log is one byte stream with two kinds of lines: the build's output,
// stored byte for byte, and cleanroom's own lines (the agent's and the
// coordinator's), each of which starts with RecordMarker. The marker is
// made impossible in build output (BuildOutput), so a line the build prints
// can never pass for one of cleanroom's, however it is spelled; LogRenderer
// shows the two kinds differently and neutralises control characters, so
// the build cannot rewrite what a user sees in a terminal either.
const (
	// RecordMarker (ASCII record separator) starts each of cleanroom's own
	// lines in a stored job log. It may follow an unterminated build line:
	// a record always starts a new line when rendered.
	RecordMarker byte = 0x1e
	// AgentPrefix starts the text of the agent's lines.
	AgentPrefix = "[cleanroom] "
	// markerStandIn replaces RecordMarker in build output: U+241E SYMBOL
	// FOR RECORD SEPARATOR, which reads the same and marks nothing.
	markerStandIn = "\u241e"
	// buildGutter starts a rendered build line that could otherwise be
	// mistaken for one of cleanroom's (see LogRenderer).
	buildGutter = "│ "
)

// AgentLine frames msg as the agent's lines of a job log: every line of msg
// (one trailing newline dropped) becomes RecordMarker, AgentPrefix, the line
// and a newline. A RecordMarker inside msg is replaced as in build output,
// so text the build chose (a file name, an error) cannot start a record of
// its own.
func AgentLine(msg string) string {
	return frame(msg, AgentPrefix)
}

// Record frames text (one or more lines, a trailing newline dropped) as
// cleanroom's own lines without adding AgentPrefix, for lines that carry a
// prefix of their own such as the coordinator's "[cleanroom: …]".
func Record(text string) string {
	return frame(text, "")
}

func frame(text, prefix string) string {
	text = strings.ReplaceAll(strings.TrimSuffix(text, "\n"), string(RecordMarker), markerStandIn)
	var b strings.Builder
	for _, l := range strings.Split(text, "\n") {
		b.WriteByte(RecordMarker)
		b.WriteString(prefix)
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return b.String()
}

// BuildOutput returns a writer for the build's output that passes every
// byte on to w unchanged except RecordMarker, which becomes U+241E (␞): the
// build cannot start a record. It keeps no state (the marker is one ASCII
// byte, never part of a UTF-8 sequence), so it may be shared by concurrent
// writers if w may.
func BuildOutput(w io.Writer) io.Writer { return buildOutput{w} }

type buildOutput struct{ w io.Writer }

func (b buildOutput) Write(p []byte) (int, error) {
	if bytes.IndexByte(p, RecordMarker) < 0 {
		return b.w.Write(p)
	}
	if _, err := b.w.Write(bytes.ReplaceAll(p, []byte{RecordMarker}, []byte(markerStandIn))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// unsafeRune reports whether r must not reach a terminal as it is: C0
// controls (tab and newline included: a caller that keeps them checks them
// first), DEL, C1 controls, format characters (the bidi embeddings,
// overrides and isolates U+202A–U+202E and U+2066–U+2069, the marks U+200E,
// U+200F and U+061C, zero-width characters, the BOM) and the line and
// paragraph separators. Such runes move the cursor, clear or recolour the
// screen, reorder text or hide it.
func unsafeRune(r rune) bool {
	return r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f) ||
		unicode.Is(unicode.Cf, r) || r == '\u2028' || r == '\u2029'
}

// appendVisible appends the visible form of the rune r that starts src
// (size bytes; for an invalid byte r is utf8.RuneError and size 1):
// control pictures for C0 and DEL (ESC → ␛), <U+XXXX> for the other unsafe
// runes, <0xNN> for a byte that is not UTF-8, other runes as they are.
func appendVisible(dst []byte, src []byte, r rune, size int) []byte {
	switch {
	case r == utf8.RuneError && size == 1:
		return fmt.Appendf(dst, "<0x%02X>", src[0])
	case r < 0x20:
		return utf8.AppendRune(dst, 0x2400+r)
	case r == 0x7f:
		return utf8.AppendRune(dst, '\u2421')
	case unsafeRune(r):
		return fmt.Appendf(dst, "<U+%04X>", r)
	}
	return append(dst, src[:size]...)
}

// Printable returns s with every unsafe rune (tab and newline included)
// and every invalid byte in its visible form, as LogRenderer shows them:
// for one-line messages that carry text a build chose, such as a job's
// reason.
func Printable(s string) string {
	var out []byte
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		out = appendVisible(out, []byte(s[i:i+size]), r, size)
		i += size
	}
	return string(out)
}

// lineState is where a LogRenderer is in its input.
type lineState int

const (
	atLineStart   lineState = iota // nothing of the current line seen yet
	atRecordStart                  // a RecordMarker seen, none of its text
	inBuildLine
	inRecord
)

// Styles of cleanroom's own lines on a terminal (bold cyan) and of the
// gutter of a marked build line (dim).
const (
	styleRecord = "\x1b[1;36m"
	styleGutter = "\x1b[2m"
	styleReset  = "\x1b[0m"
)

// LogRenderer writes a stored job log for a person to read: cleanroom's
// own lines (RecordMarker) as their text, which starts with "[", in bold
// colour when styled; build lines with every unsafe rune (UnsafeRune) and
// invalid byte shown as a visible escape, tab and newline kept. A build
// line whose first byte is "[" or not ASCII (a look-alike of "[", a
// combining or invisible character) gets a gutter ("│ "), so no rendered
// build line starts like one of cleanroom's, styled or not. It keeps state
// across writes: a line or a UTF-8 sequence may be split anywhere between
// two writes. Flush ends the output. Not safe for concurrent use.
type LogRenderer struct {
	w      io.Writer
	styled bool
	state  lineState
	open   bool   // a record's style is on in out
	held   []byte // the start of a UTF-8 sequence cut by the end of a write
	out    []byte
	err    error
}

// NewLogRenderer returns a renderer writing to w; styled adds terminal
// escape sequences of its own (only for a terminal).
func NewLogRenderer(w io.Writer, styled bool) *LogRenderer {
	return &LogRenderer{w: w, styled: styled}
}

// Write renders p. It returns len(p) unless w failed; after a failure every
// write fails with the same error.
func (lr *LogRenderer) Write(p []byte) (int, error) {
	if lr.err != nil {
		return 0, lr.err
	}
	data := p
	if len(lr.held) > 0 {
		data = append(lr.held, p...)
		lr.held = nil
	}
	lr.out = lr.out[:0]
	for i := 0; i < len(data); {
		c := data[i]
		switch {
		case c == RecordMarker && lr.state == atLineStart:
			lr.state = atRecordStart
			i++
			continue
		case c == RecordMarker || c == '\n':
			lr.endLine()
			if c == '\n' {
				i++
			} // else the marker is read again, at the start of a line
			continue
		case !utf8.FullRune(data[i:]):
			lr.held = append([]byte(nil), data[i:]...)
			i = len(data)
			continue
		}
		r, size := utf8.DecodeRune(data[i:])
		lr.begin(c)
		if r == '\t' {
			lr.out = append(lr.out, '\t')
		} else {
			lr.out = appendVisible(lr.out, data[i:], r, size)
		}
		i += size
	}
	if err := lr.emit(); err != nil {
		return 0, err
	}
	return len(p), nil
}

// begin prepares the output for a rune whose first byte is c: it starts a
// build line or a record, or turns a record's style back on in a new write.
func (lr *LogRenderer) begin(c byte) {
	switch lr.state {
	case atLineStart:
		lr.beginBuildLine(c)
	case atRecordStart:
		lr.beginRecord(c)
	case inRecord:
		if lr.styled && !lr.open {
			lr.out = append(lr.out, styleRecord...)
			lr.open = true
		}
	}
}

// endLine ends the current line (an empty record is still rendered as one).
func (lr *LogRenderer) endLine() {
	if lr.state == atRecordStart {
		lr.beginRecord(0)
	}
	lr.closeStyle()
	lr.out = append(lr.out, '\n')
	lr.state = atLineStart
}

func (lr *LogRenderer) closeStyle() {
	if lr.open {
		lr.out = append(lr.out, styleReset...)
		lr.open = false
	}
}

// emit writes this write's output, a record's style closed so that the
// terminal is left plain between writes.
func (lr *LogRenderer) emit() error {
	lr.closeStyle()
	if len(lr.out) == 0 {
		return nil
	}
	if _, err := lr.w.Write(lr.out); err != nil {
		lr.err = err
		return err
	}
	return nil
}

// beginBuildLine starts a build line whose first byte is c.
func (lr *LogRenderer) beginBuildLine(c byte) {
	lr.state = inBuildLine
	if c == '[' || c >= utf8.RuneSelf {
		if lr.styled {
			lr.out = append(append(append(lr.out, styleGutter...), buildGutter...), styleReset...)
		} else {
			lr.out = append(lr.out, buildGutter...)
		}
	}
}

// beginRecord starts the text of a record whose first byte is c (0 for an
// empty record): text that does not start with "[" gets AgentPrefix, so
// every rendered record starts with it.
func (lr *LogRenderer) beginRecord(c byte) {
	lr.state = inRecord
	if lr.styled {
		lr.out = append(lr.out, styleRecord...)
		lr.open = true
	}
	if c != '[' {
		lr.out = append(lr.out, AgentPrefix...)
	}
}

// Flush renders what a cut UTF-8 sequence held back (as invalid bytes) and
// ends an unterminated line, so whatever is printed next starts a line of
// its own.
func (lr *LogRenderer) Flush() error {
	if lr.err != nil {
		return lr.err
	}
	lr.out = lr.out[:0]
	for _, c := range lr.held {
		lr.begin(c)
		lr.out = appendVisible(lr.out, []byte{c}, utf8.RuneError, 1)
	}
	lr.held = nil
	if lr.state != atLineStart {
		lr.endLine()
	}
	return lr.emit()
}
