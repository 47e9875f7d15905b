package api

// This file checks that a body is JSON, as encoding/json.Valid does (the
// same grammar, the same bound of 10,000 nested arrays and objects, no
// check of UTF-8) but without its per-byte state machine: it is the first
// pass over every request body. FuzzValidJSON holds the two to the same
// answers.

// maxNesting is encoding/json's bound on nested arrays and objects.
const maxNesting = 10000

// stringStop marks the bytes that end the plain run of a JSON string: the
// quote, the backslash and the control characters, which are not allowed
// in a string unescaped.
var stringStop = func() (t [256]bool) {
	for c := range 0x20 {
		t[c] = true
	}
	t['"'], t['\\'] = true, true
	return t
}()

// validJSON reports whether b is one JSON value, with whitespace around it
// allowed. It walks b once, iteratively: its memory is a fixed bit stack
// whatever the nesting.
func validJSON(b []byte) bool {
	var v validator
	return v.run(b)
}

// validator is the state of validJSON: which of the open containers are
// objects (a bit per level) and how many are open.
type validator struct {
	objects [maxNesting/64 + 1]uint64
	depth   int
}

func (v *validator) push(object bool) bool {
	if v.depth == maxNesting {
		return false
	}
	word, bit := v.depth/64, uint(v.depth%64)
	if object {
		v.objects[word] |= 1 << bit
	} else {
		v.objects[word] &^= 1 << bit
	}
	v.depth++
	return true
}

// inObject reports whether the innermost open container is an object.
func (v *validator) inObject() bool {
	d := v.depth - 1
	return v.objects[d/64]&(1<<uint(d%64)) != 0
}

func (v *validator) run(b []byte) bool {
	i := skipSpace(b, 0)
	for {
		// A value starts at b[i].
		if i >= len(b) {
			return false
		}
		switch b[i] {
		case '{', '[':
			open := b[i]
			if !v.push(open == '{') {
				return false
			}
			i = skipSpace(b, i+1)
			if i < len(b) && (b[i] == '}' && open == '{' || b[i] == ']' && open == '[') {
				v.depth--
				i++
				break
			}
			if open == '{' {
				if i = objectKey(b, i); i < 0 {
					return false
				}
			}
			continue
		default:
			if i = scalar(b, i); i < 0 {
				return false
			}
		}
		// After a value: close containers, or go on to the next value.
		var ok bool
		if i, ok = v.next(b, i); !ok {
			return false
		}
		if v.depth == 0 {
			return i == len(b)
		}
	}
}

// next moves past what follows a value at b[i]: the ends of the containers
// it closes and, if one stays open, the comma (and, in an object, the next
// key and its colon) before the next value. It reports false on anything
// else.
func (v *validator) next(b []byte, i int) (int, bool) {
	for {
		i = skipSpace(b, i)
		if v.depth == 0 {
			return i, true
		}
		if i >= len(b) {
			return i, false
		}
		object := v.inObject()
		switch c := b[i]; {
		case c == ',':
			i = skipSpace(b, i+1)
			if object {
				i = objectKey(b, i)
			}
			return i, i >= 0
		case c == '}' && object, c == ']' && !object:
			v.depth--
			i++
		default:
			return i, false
		}
	}
}

// objectKey checks the key at b[i] and the colon after it, and returns the
// index of the value (after whitespace), or -1.
func objectKey(b []byte, i int) int {
	if i >= len(b) || b[i] != '"' {
		return -1
	}
	if i = validString(b, i); i < 0 {
		return -1
	}
	i = skipSpace(b, i)
	if i >= len(b) || b[i] != ':' {
		return -1
	}
	return skipSpace(b, i+1)
}

// scalar checks the string, number or literal at b[i] and returns the
// index after it, or -1.
func scalar(b []byte, i int) int {
	switch b[i] {
	case '"':
		return validString(b, i)
	case 't':
		return literal(b, i, "true")
	case 'f':
		return literal(b, i, "false")
	case 'n':
		return literal(b, i, "null")
	default:
		return validNumber(b, i)
	}
}

func literal(b []byte, i int, word string) int {
	if len(b)-i < len(word) || string(b[i:i+len(word)]) != word {
		return -1
	}
	return i + len(word)
}

// validString checks the string that starts at b[i] ('"') and returns the
// index after its closing quote, or -1.
func validString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		c := b[i]
		if !stringStop[c] {
			continue
		}
		switch {
		case c == '"':
			return i + 1
		case c < 0x20:
			return -1
		}
		// A backslash.
		if i+1 >= len(b) {
			return -1
		}
		i++
		switch b[i] {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		case 'u':
			if len(b)-i <= 4 || !isHex(b[i+1]) || !isHex(b[i+2]) || !isHex(b[i+3]) || !isHex(b[i+4]) {
				return -1
			}
			i += 4
		default:
			return -1
		}
	}
	return -1
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// validNumber checks the number at b[i] (-?(0|[1-9][0-9]*)(.[0-9]+)?
// ([eE][+-]?[0-9]+)?) and returns the index after it, or -1.
func validNumber(b []byte, i int) int {
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i >= len(b):
		return -1
	case b[i] == '0':
		i++
	case isDigit(b[i]):
		i = digits(b, i)
	default:
		return -1
	}
	if i < len(b) && b[i] == '.' {
		if i+1 >= len(b) || !isDigit(b[i+1]) {
			return -1
		}
		i = digits(b, i+1)
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || !isDigit(b[i]) {
			return -1
		}
		i = digits(b, i)
	}
	return i
}

func digits(b []byte, i int) int {
	for i < len(b) && isDigit(b[i]) {
		i++
	}
	return i
}
