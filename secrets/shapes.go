package secrets

// shapeKind names a token shape redacted even when no secret is configured.
type shapeKind uint8

const (
	shapeNone          shapeKind = iota // a configured secret, not a shape
	shapeNPMToken                       // npm_ followed by 36 letters or digits
	shapeBearer                         // Bearer <token> anywhere
	shapeAuthorization                  // Authorization: <scheme> <credentials>
	shapeUserinfo                       // scheme://user:pass@host
	shapeKeyValue                       // _authToken=..., _auth=..., _password=...
)

// shapeLookahead bounds how far past its trigger a shape may extend, and so
// how many bytes a redactor holds back while deciding.
const shapeLookahead = 1024

// triggers are the words that start a shape; they live in the same automaton
// as the secrets, so shapes cost nothing on bytes that cannot start one.
var triggers = []struct {
	word string
	kind shapeKind
	fold bool
}{
	{"npm_", shapeNPMToken, false},
	{"bearer", shapeBearer, true},
	{"authorization", shapeAuthorization, true},
	{"://", shapeUserinfo, false},
	{"_authtoken", shapeKeyValue, true},
	{"_auth", shapeKeyValue, true},
	{"_password", shapeKeyValue, true},
}

// verdict is the outcome of looking at a possible match.
type verdict uint8

const (
	needMore verdict = iota // undecided until more bytes arrive
	noMatch
	matched
)

// parseShape decides whether b (starting with a trigger of length t) is the
// shape kind, returning the range of b to hide. It only answers matched or
// noMatch from bytes that fix the answer whatever follows, so the result
// does not depend on how the stream was chunked.
func parseShape(kind shapeKind, b []byte, t int, eof bool) (verdict, int, int) {
	if len(b) > t+shapeLookahead {
		b, eof = b[:t+shapeLookahead], true
	}
	switch kind {
	case shapeNPMToken:
		for i := t; i < t+36; i++ {
			if i >= len(b) {
				return undecided(eof), 0, 0
			}
			if !isAlnum(b[i]) {
				return noMatch, 0, 0
			}
		}
		return matched, 0, t + 36
	case shapeBearer:
		i, v := skip(b, t, isBlank, eof)
		if v != matched || i == t {
			return notMatched(v), 0, 0
		}
		j, v := skip(b, i, isToken, eof)
		if v != matched {
			return v, 0, 0
		}
		if j-i >= 8 && looksLikeToken(b[i:j]) {
			return matched, i, j
		}
		return noMatch, 0, 0
	case shapeKeyValue:
		i, v := separator(b, t, eof)
		if v != matched {
			return v, 0, 0
		}
		j, v := skip(b, i, isValue, eof)
		if v != matched || j == i {
			return notMatched(v), 0, 0
		}
		return matched, i, j
	case shapeAuthorization:
		i, v := separator(b, t, eof)
		if v != matched {
			return v, 0, 0
		}
		j, v := skip(b, i, isValue, eof)
		if v != matched || j == i {
			return notMatched(v), 0, 0
		}
		if !allLetters(b[i:j]) || j == len(b) || !isBlank(b[j]) {
			return matched, i, j // a bare credential
		}
		k, v := skip(b, j, isBlank, eof)
		if v != matched {
			return v, 0, 0
		}
		l, v := skip(b, k, isValue, eof)
		if v != matched {
			return v, 0, 0
		}
		if l == k {
			return matched, i, j // "Authorization: word" then nothing: hide the word
		}
		return matched, k, l // keep the scheme, hide the credentials
	case shapeUserinfo:
		i, v := skip(b, t, isUserinfo, eof)
		if v != matched {
			return v, 0, 0
		}
		if i == len(b) || b[i] != '@' || i == t || !hasByte(b[t:i], ':') {
			return noMatch, 0, 0
		}
		return matched, t, i
	}
	return noMatch, 0, 0
}

// skip advances over bytes satisfying ok. It returns matched with the index
// of the first other byte (or len(b) at eof), or needMore when b ran out.
func skip(b []byte, i int, ok func(byte) bool, eof bool) (int, verdict) {
	for i < len(b) && ok(b[i]) {
		i++
	}
	if i == len(b) && !eof {
		return i, needMore
	}
	return i, matched
}

// separator skips quotes and blanks, a ':' or '=', then blanks and an
// opening quote: `"_authToken": "x"`, `_authToken=x`, `Authorization: x`.
func separator(b []byte, i int, eof bool) (int, verdict) {
	i, v := skip(b, i, isQuoteOrBlank, eof)
	if v != matched {
		return i, v
	}
	if i == len(b) || (b[i] != ':' && b[i] != '=') {
		return i, noMatch
	}
	i, v = skip(b, i+1, isQuoteOrBlank, eof)
	if v == matched && i == len(b) {
		return i, noMatch
	}
	return i, v
}

func undecided(eof bool) verdict {
	if eof {
		return noMatch
	}
	return needMore
}

// notMatched turns a successful skip that found nothing into noMatch.
func notMatched(v verdict) verdict {
	if v == matched {
		return noMatch
	}
	return v
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func isBlank(c byte) bool { return c == ' ' || c == '\t' }

func isQuoteOrBlank(c byte) bool { return isBlank(c) || c == '"' || c == '\'' }

// isToken: RFC 6750 token68 characters.
func isToken(c byte) bool {
	return isAlnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/' || c == '='
}

// isValue: anything printable up to a blank, quote or list/statement separator.
func isValue(c byte) bool {
	return c > ' ' && c < 0x7f && c != '"' && c != '\'' && c != ',' && c != ';' && c != '}' && c != '<' && c != '>'
}

// isUserinfo: RFC 3986 userinfo characters (unreserved, pct-encoded, sub-delims, ':').
func isUserinfo(c byte) bool {
	if isAlnum(c) {
		return true
	}
	switch c {
	case '-', '.', '_', '~', '%', '!', '$', '&', '\'', '(', ')', '*', '+', ',', ';', '=', ':':
		return true
	}
	return false
}

// looksLikeToken keeps prose ("Bearer authentication") readable: a bare
// bearer token must contain a digit or token punctuation.
func looksLikeToken(b []byte) bool {
	for _, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return true
		}
	}
	return false
}

func allLetters(b []byte) bool { return !looksLikeToken(b) }

func hasByte(b []byte, c byte) bool {
	for _, x := range b {
		if x == c {
			return true
		}
	}
	return false
}
