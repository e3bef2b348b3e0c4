package runtime

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// SecretSource resolves a secret name to its value at apply time. Values
// never enter specs, labels, plans or logs.
type SecretSource interface {
	Secret(name string) (string, error)
}

// ErrSecretNotFound is returned when no source has the secret.
var ErrSecretNotFound = errors.New("secret not found")

// EnvSecrets reads secret NAME from the environment variable
// LABSYNC_SECRET_<NAME>, upper-cased with '-' and '.' turned into '_'.
type EnvSecrets struct{}

// EnvName returns the environment variable that holds secret name.
func (EnvSecrets) EnvName(name string) string {
	return "LABSYNC_SECRET_" + strings.NewReplacer("-", "_", ".", "_").Replace(strings.ToUpper(name))
}

// Secret implements SecretSource.
func (e EnvSecrets) Secret(name string) (string, error) {
	if v, ok := os.LookupEnv(e.EnvName(name)); ok {
		return v, nil
	}
	return "", fmt.Errorf("%w: set %s or put it in the secrets directory", ErrSecretNotFound, e.EnvName(name))
}

// DirSecrets reads secret NAME from the file Dir/NAME (trailing newline
// trimmed), then falls back to the environment.
type DirSecrets struct{ Dir string }

// Secret implements SecretSource.
func (d DirSecrets) Secret(name string) (string, error) {
	if d.Dir != "" {
		data, err := os.ReadFile(filepath.Join(d.Dir, filepath.Base(name)))
		if err == nil {
			return strings.TrimRight(string(data), "\r\n"), nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("read secret %s: %w", name, err)
		}
	}
	v, err := EnvSecrets{}.Secret(name)
	if err != nil {
		return "", fmt.Errorf("%w: add %s or set %s", ErrSecretNotFound, filepath.Join(d.Dir, name), EnvSecrets{}.EnvName(name))
	}
	return v, nil
}
