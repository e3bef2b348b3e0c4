package mqttbus

import (
	"bufio"
	"crypto/pbkdf2"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// Users are the embedded broker's users: each may publish commands and
// job submissions. Everyone else may only read.
type Users map[string]password

// password is one user's password: plain text, or a mosquitto_passwd hash.
type password struct {
	plain string
	// kind 6 is mosquitto's SHA-512 of password and salt, kind 7 its
	// PBKDF2-SHA512; 0 is plain text.
	kind       int
	iterations int
	salt, hash []byte
}

// maxIterations bounds a PBKDF2 iteration count read from the users file:
// every connect of a listed user pays it.
const maxIterations = 1_000_000

// LoadUsers reads a users file: one user:password a line, # comments and
// blank lines ignored. A password written as mosquitto_passwd writes it
// ($7$ PBKDF2-SHA512, or $6$ SHA-512) is checked as that hash; anything
// else is the password itself.
func LoadUsers(path string) (Users, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("mqtt users file: %w", err)
	}
	defer f.Close()
	return ParseUsers(f, path)
}

// ParseUsers reads the users file format of LoadUsers from r; name is used
// in messages.
func ParseUsers(r io.Reader, name string) (Users, error) {
	users := Users{}
	sc := bufio.NewScanner(r)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimRight(sc.Text(), "\r")
		if t := strings.TrimSpace(line); t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		user, pw, ok := strings.Cut(line, ":")
		switch {
		case !ok:
			return nil, fmt.Errorf("%s:%d: want user:password", name, n)
		case user == "" || strings.TrimSpace(user) != user:
			return nil, fmt.Errorf("%s:%d: empty user name, or spaces around it", name, n)
		case pw == "":
			return nil, fmt.Errorf("%s:%d: user %q has an empty password", name, n, user)
		}
		if _, dup := users[user]; dup {
			return nil, fmt.Errorf("%s:%d: user %q is listed twice", name, n, user)
		}
		p, err := parsePassword(pw)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: user %q: %v", name, n, user, err)
		}
		users[user] = p
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return users, nil
}

func parsePassword(s string) (password, error) {
	var kind int
	switch {
	case strings.HasPrefix(s, "$7$"):
		kind = 7
	case strings.HasPrefix(s, "$6$"):
		kind = 6
	default:
		return password{plain: s}, nil
	}
	parts := strings.Split(s, "$") // "", "7", iterations, salt, hash
	p := password{kind: kind, iterations: 1}
	if kind == 7 {
		if len(parts) != 5 {
			return p, fmt.Errorf("a $7$ hash is $7$<iterations>$<salt>$<hash>")
		}
		it, err := strconv.Atoi(parts[2])
		if err != nil || it < 1 || it > maxIterations {
			return p, fmt.Errorf("$7$ iterations %q: want 1 to %d", parts[2], maxIterations)
		}
		p.iterations, parts = it, append(parts[:2], parts[3:]...)
	}
	if len(parts) != 4 {
		return p, fmt.Errorf("a $6$ hash is $6$<salt>$<hash>")
	}
	var err error
	if p.salt, err = base64.StdEncoding.DecodeString(parts[2]); err != nil || len(p.salt) == 0 {
		return p, fmt.Errorf("the salt is not base64")
	}
	if p.hash, err = base64.StdEncoding.DecodeString(parts[3]); err != nil || len(p.hash) != sha512.Size {
		return p, fmt.Errorf("the hash is not %d bytes of base64", sha512.Size)
	}
	return p, nil
}

// check reports whether given is the password, in constant time for a
// given password kind.
func (p password) check(given []byte) bool {
	switch p.kind {
	case 7:
		key, err := pbkdf2.Key(sha512.New, string(given), p.salt, p.iterations, len(p.hash))
		return err == nil && subtle.ConstantTimeCompare(key, p.hash) == 1
	case 6:
		h := sha512.New()
		h.Write(given)
		h.Write(p.salt)
		return subtle.ConstantTimeCompare(h.Sum(nil), p.hash) == 1
	default:
		return subtle.ConstantTimeCompare(given, []byte(p.plain)) == 1
	}
}

// Check reports whether password is user's. An unknown user is never
// right.
func (u Users) Check(user string, pw []byte) bool {
	p, ok := u[user]
	return ok && p.check(pw)
}
