package api

import "bytes"

// This file walks JSON that validJSON has already accepted, without
// allocating: it splits a batch into its elements and an event object into its
// members as sub-slices of the request body. It does no validation of its own,
// so it must only see valid JSON.

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r'
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// trimSpace removes JSON whitespace at both ends of b.
func trimSpace(b []byte) []byte {
	i := skipSpace(b, 0)
	j := len(b)
	for j > i && isSpace(b[j-1]) {
		j--
	}
	return b[i:j]
}

// skipString returns the index after the string that starts at b[i] ('"'):
// after the first quote not escaped, that is not after an odd run of
// backslashes (in valid JSON a backslash starts an escape).
func skipString(b []byte, i int) int {
	for j := i + 1; j < len(b); {
		k := bytes.IndexByte(b[j:], '"')
		if k < 0 {
			break
		}
		q := j + k
		n := 0
		for p := q - 1; p > i && b[p] == '\\'; p-- {
			n++
		}
		if n%2 == 0 {
			return q + 1
		}
		j = q + 1
	}
	return len(b)
}

// skipValue returns the index after the value that starts at b[i].
func skipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				j = skipString(b, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			}
		}
		return len(b)
	default: // number, true, false, null
		j := i
		for j < len(b) {
			switch b[j] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return j
			}
			j++
		}
		return j
	}
}

// arrayIter yields the elements of a valid JSON array.
type arrayIter struct {
	b []byte
	i int
}

func newArrayIter(b []byte) arrayIter { return arrayIter{b: b, i: 1} }

func (it *arrayIter) next() ([]byte, bool) {
	b := it.b
	i := skipSpace(b, it.i)
	if i < len(b) && b[i] == ',' {
		i = skipSpace(b, i+1)
	}
	if i >= len(b) || b[i] == ']' {
		it.i = len(b)
		return nil, false
	}
	end := skipValue(b, i)
	it.i = end
	return b[i:end], true
}

// objectIter yields the members of a valid JSON object: the key with its
// quotes, and the value.
type objectIter struct {
	b []byte
	i int
}

func newObjectIter(b []byte) objectIter { return objectIter{b: b, i: 1} }

func (it *objectIter) next() (key, val []byte, ok bool) {
	b := it.b
	i := skipSpace(b, it.i)
	if i < len(b) && b[i] == ',' {
		i = skipSpace(b, i+1)
	}
	if i >= len(b) || b[i] == '}' {
		it.i = len(b)
		return nil, nil, false
	}
	kend := skipString(b, i)
	key = b[i:kend]
	i = skipSpace(b, kend)
	if i < len(b) && b[i] == ':' {
		i = skipSpace(b, i+1)
	}
	if i >= len(b) {
		it.i = len(b)
		return nil, nil, false
	}
	vend := skipValue(b, i)
	it.i = vend
	return key, b[i:vend], true
}

// shape measures a valid JSON value: its nesting depth (0 for a scalar, 1 for
// a flat object) and whether it has whitespace outside strings.
func shape(b []byte) (depth int, spaced bool) {
	d := 0
	for j := 0; j < len(b); j++ {
		switch c := b[j]; c {
		case '"':
			j = skipString(b, j) - 1
		case '{', '[':
			d++
			if d > depth {
				depth = d
			}
		case '}', ']':
			d--
		case ' ', '\t', '\n', '\r':
			spaced = true
		}
	}
	return depth, spaced
}
