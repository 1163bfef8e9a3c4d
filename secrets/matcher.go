package secrets

import (
	"bytes"
	"slices"
	"strings"
)

// Automaton limits.
const (
	// indexPrefix is the longest pattern prefix stored in the automaton;
	// longer patterns are confirmed byte by byte after their prefix matched,
	// which keeps the automaton small even for 1 MiB values.
	indexPrefix = 64
)

// Marker replaces every redacted run of bytes.
const Marker = "[REDACTED]"

// pattern is one string the automaton looks for: an encoded secret, or the
// trigger word of a token shape.
type pattern struct {
	exact  []byte // as it appears in text (checked when !fold)
	folded []byte // ASCII lower case (checked when fold)
	fold   bool
	kind   shapeKind // shapeNone for a secret
}

// Matcher finds secrets (in all their encodings) and token shapes. It is an
// Aho–Corasick automaton over ASCII-folded bytes, compiled to a dense
// transition table indexed by byte class, so scanning costs one table lookup
// per byte whatever the number of secrets. Build it once (NewMatcher or
// Store.Matcher) and share it: it is immutable and safe for concurrent use.
type Matcher struct {
	cls   [256]uint32 // byte → class, after ASCII case folding
	nc    uint32      // number of classes; states are stored as id*nc
	trans []uint32    // trans[state+class] = next state
	// outStart is the first state where a pattern ends: those states are
	// numbered last, so the scan loop tests for a hit with one comparison.
	outStart uint32
	depth    []int32   // by state id: length of the prefix it stands for
	outs     [][]int32 // by state id: patterns ending here
	pats     []pattern
}

// NewMatcher compiles a matcher for values (each in all the forms listed by
// encodings; values shorter than MinRedactLen are ignored) plus the token
// shapes that are redacted even when not configured.
func NewMatcher(values [][]byte) *Matcher {
	m := &Matcher{}
	seen := map[string]bool{}
	add := func(p pattern) {
		key := string(p.exact)
		if p.fold {
			key = "f\x00" + string(p.folded)
		}
		key = string(rune('a'+p.kind)) + key
		if seen[key] {
			return
		}
		seen[key] = true
		m.pats = append(m.pats, p)
	}
	for _, t := range triggers {
		add(pattern{exact: []byte(t.word), folded: foldBytes([]byte(t.word)), fold: t.fold, kind: t.kind})
	}
	for _, v := range values {
		if len(v) < MinRedactLen {
			continue
		}
		for _, e := range encodings(v) {
			add(pattern{exact: e.b, folded: foldBytes(e.b), fold: e.fold})
		}
	}
	m.compile()
	return m
}

// key is the prefix of p stored in the automaton. Besides ASCII case it
// folds the base64 URL alphabet onto the standard one, so the two base64
// forms of a secret share one path; hit tells them apart by exact compare.
func (p *pattern) key() []byte {
	k := bytes.Clone(p.folded[:min(len(p.folded), indexPrefix)])
	for i, c := range k {
		k[i] = automatonFold(c)
	}
	return k
}

// automatonFold is the byte folding applied by the automaton.
func automatonFold(c byte) byte {
	switch c {
	case '+':
		return '-'
	case '/':
		return '_'
	}
	return lowerASCII(c)
}

// compile builds the trie of pattern prefixes and turns it into a DFA.
func (m *Matcher) compile() {
	var used [256]bool
	for i := range m.pats {
		for _, c := range m.pats[i].key() {
			used[c] = true
		}
	}
	var classOf [256]uint32
	nc := uint32(1) // class 0: bytes in no pattern
	for c := range 256 {
		if used[c] {
			classOf[c] = nc
			nc++
		}
	}
	for b := range 256 {
		m.cls[b] = classOf[automatonFold(byte(b))]
	}
	m.nc = nc

	total := 1
	for i := range m.pats {
		total += len(m.pats[i].key())
	}
	trans := make([]uint32, nc, total*int(nc)) // row of the root; 0 = no child yet
	depth := []int32{0}
	own := [][]int32{nil}
	for pi := range m.pats {
		s := uint32(0)
		for _, c := range m.pats[pi].key() {
			cell := s*nc + classOf[c]
			if trans[cell] == 0 {
				id := uint32(len(depth))
				trans[cell] = id
				trans = trans[:len(trans)+int(nc)] // within capacity: zeroed
				depth = append(depth, depth[s]+1)
				own = append(own, nil)
			}
			s = trans[s*nc+classOf[c]]
		}
		own[s] = append(own[s], int32(pi))
	}

	n := len(depth)
	fail := make([]uint32, n)
	outs := make([][]int32, n)
	queue := make([]uint32, 0, n)
	for c := range nc {
		if child := trans[c]; child != 0 {
			queue = append(queue, child)
		}
	}
	for head := 0; head < len(queue); head++ {
		s := queue[head]
		// fail[s] is shallower, so its outputs and row are complete.
		outs[s] = append(slices.Clip(own[s]), outs[fail[s]]...)
		for c := range nc {
			cell := s*nc + c
			if child := trans[cell]; child != 0 {
				fail[child] = trans[fail[s]*nc+c]
				queue = append(queue, child)
			} else {
				trans[cell] = trans[fail[s]*nc+c]
			}
		}
	}
	// Renumber states in breadth-first order: the shallow states, where a
	// scan spends nearly all its time, then share a few cache-friendly rows.
	// States where a pattern ends (rarely visited) go last.
	order := make([]uint32, 0, n)
	order = append(order, 0)
	for _, s := range queue {
		if len(outs[s]) == 0 {
			order = append(order, s)
		}
	}
	m.outStart = uint32(len(order)) * nc
	for _, s := range queue {
		if len(outs[s]) > 0 {
			order = append(order, s)
		}
	}
	newID := make([]uint32, n)
	for i, old := range order {
		newID[old] = uint32(i)
	}
	m.trans = make([]uint32, len(trans))
	m.depth = make([]int32, n)
	m.outs = make([][]int32, n)
	for i, old := range order {
		m.depth[i], m.outs[i] = depth[old], outs[old]
		row := m.trans[uint32(i)*nc : uint32(i+1)*nc]
		for c, t := range trans[old*nc : (old+1)*nc] {
			row[c] = newID[t] * nc
		}
	}
}

// span is a half-open range [start, end) of absolute stream offsets to hide.
type span struct{ start, end int64 }

// pendingMatch is a pattern whose indexed prefix matched but which needs
// more bytes to decide: a long secret, or a token shape after its trigger.
type pendingMatch struct {
	pat     int32
	start   int64 // absolute offset of the first byte of the pattern
	checked int   // long secrets: bytes already confirmed
}

// stream is the scanning state shared by the streaming Redactor and the
// one-shot RedactString: a window of bytes starting at absolute offset base.
type stream struct {
	m       *Matcher
	buf     []byte
	base    int64
	scanned int64  // absolute offset the automaton has read up to
	state   uint32 // current state (id*nc)
	found   []span
	pending []pendingMatch
}

// scan runs the automaton over the bytes not yet scanned.
func (st *stream) scan() {
	m := st.m
	data := st.buf[st.scanned-st.base:]
	trans, cls, out := m.trans, &m.cls, m.outStart
	s := st.state
	for i, b := range data {
		s = trans[s+cls[b]]
		if s >= out {
			st.hit(st.scanned+int64(i)+1, s/m.nc)
		}
	}
	st.state = s
	st.scanned += int64(len(data))
}

// hit records the patterns whose indexed prefix ends at absolute offset end.
func (st *stream) hit(end int64, id uint32) {
	for _, pi := range st.m.outs[id] {
		p := &st.m.pats[pi]
		n := int64(min(len(p.exact), indexPrefix))
		start := end - n
		if rel := start - st.base; rel >= 0 && !p.verify(st.buf[rel:rel+n]) {
			continue // e.g. same letters, other case: not this case-sensitive form
		}
		if p.kind == shapeNone && len(p.exact) <= indexPrefix {
			st.found = append(st.found, span{start, end})
			continue
		}
		st.pending = append(st.pending, pendingMatch{pat: pi, start: start, checked: int(n)})
	}
}

// resolve decides the pending matches that have enough bytes (all of them at
// eof) and keeps the others.
func (st *stream) resolve(eof bool) {
	keep := st.pending[:0]
	for _, pd := range st.pending {
		p := &st.m.pats[pd.pat]
		b := st.buf[pd.start-st.base:]
		var res verdict
		var s, e int
		if p.kind == shapeNone {
			res, e = p.confirm(b, &pd.checked, eof)
		} else {
			res, s, e = parseShape(p.kind, b, len(p.exact), eof)
		}
		switch res {
		case needMore:
			keep = append(keep, pd)
		case matched:
			st.found = append(st.found, span{pd.start + int64(s), pd.start + int64(e)})
		}
	}
	st.pending = keep
}

// safe returns the offset before which no future match can start: the
// automaton's current partial match and undecided pending matches begin at or
// after it.
func (st *stream) safe() int64 {
	s := st.base + int64(len(st.buf)) - int64(st.m.depth[st.state/st.m.nc])
	for _, pd := range st.pending {
		s = min(s, pd.start)
	}
	return s
}

// verify checks an automaton hit on p's indexed prefix, which was matched
// with automatonFold.
func (p *pattern) verify(b []byte) bool {
	if !p.fold {
		return bytes.Equal(b, p.exact[:len(b)])
	}
	for i, c := range b {
		if lowerASCII(c) != p.folded[i] {
			return false
		}
	}
	return true
}

// confirm checks the rest of a long secret pattern; b starts at its first byte.
func (p *pattern) confirm(b []byte, checked *int, eof bool) (verdict, int) {
	i := *checked
	for ; i < len(p.exact) && i < len(b); i++ {
		if p.fold && lowerASCII(b[i]) != p.folded[i] || !p.fold && b[i] != p.exact[i] {
			return noMatch, 0
		}
	}
	*checked = i
	switch {
	case i == len(p.exact):
		return matched, i
	case eof:
		return noMatch, 0
	}
	return needMore, 0
}

// spans returns the sorted, merged spans to hide in data.
func (m *Matcher) spans(data []byte) []span {
	st := stream{m: m, buf: data}
	st.scan()
	st.resolve(true)
	return mergeSpans(st.found)
}

// mergeSpans sorts spans and joins those that overlap or touch.
func mergeSpans(sp []span) []span {
	slices.SortFunc(sp, func(a, b span) int {
		switch {
		case a.start < b.start:
			return -1
		case a.start > b.start:
			return 1
		}
		return 0
	})
	out := sp[:0]
	for _, s := range sp {
		if n := len(out); n > 0 && s.start <= out[n-1].end {
			out[n-1].end = max(out[n-1].end, s.end)
			continue
		}
		out = append(out, s)
	}
	return out
}

// render writes s with the given spans replaced by Marker.
func render(s string, sp []span) string {
	if len(sp) == 0 {
		return s
	}
	var b strings.Builder
	at := int64(0)
	for _, x := range sp {
		b.WriteString(s[at:x.start])
		b.WriteString(Marker)
		at = x.end
	}
	b.WriteString(s[at:])
	return b.String()
}

// RedactString hides secrets and token shapes in a complete string, with the
// same result a Redactor gives for the same bytes. Use it for single values
// such as egress events.
func (m *Matcher) RedactString(s string) string {
	return render(s, m.spans([]byte(s)))
}

// RedactDomain is RedactString for DNS names: an exfiltrating script splits
// an encoded secret over several labels, so the name is also searched with
// its dots removed, and a match there hides the labels it covers. Hex and
// base32 forms are matched case-insensitively, as DNS is.
func (m *Matcher) RedactDomain(name string) string {
	sp := m.spans([]byte(name))
	stripped := make([]byte, 0, len(name))
	pos := make([]int64, 0, len(name))
	for i := 0; i < len(name); i++ {
		if name[i] != '.' {
			stripped = append(stripped, name[i])
			pos = append(pos, int64(i))
		}
	}
	if len(stripped) != len(name) {
		for _, x := range m.spans(stripped) {
			sp = append(sp, span{pos[x.start], pos[x.end-1] + 1})
		}
		sp = mergeSpans(sp)
	}
	return render(name, sp)
}
