package lab

import (
	"bytes"
	"path"
	"regexp"
	"strings"

	"github.com/compose-spec/compose-go/v2/dotenv"
	"gopkg.in/yaml.v3"

	"github.com/labsync/labsync/internal/yamlcheck"
)

type envFileRef struct {
	path     string
	line     int
	required bool
}

// takeEnvFiles removes env_file from a service node (labsync reads those
// files from the repository itself) and returns them.
func (l *Lab) takeEnvFiles(file string, svc *yaml.Node) []envFileRef {
	svc = yamlcheck.Resolve(svc)
	if !yamlcheck.IsMap(svc) {
		return nil
	}
	var refs []envFileRef
	var kept []*yaml.Node
	for i := 0; i+1 < len(svc.Content); i += 2 {
		k, v := svc.Content[i], yamlcheck.Resolve(svc.Content[i+1])
		if k.Value != "env_file" {
			kept = append(kept, svc.Content[i], svc.Content[i+1])
			continue
		}
		items := []*yaml.Node{v}
		if yamlcheck.IsSeq(v) {
			items = yamlcheck.Items(v)
		}
		for _, it := range items {
			ref := envFileRef{line: it.Line, required: true}
			switch {
			case yamlcheck.IsScalar(it):
				ref.path = it.Value
			case yamlcheck.IsMap(it):
				for _, p := range yamlcheck.Pairs(it) {
					switch p.Key {
					case "path":
						ref.path = p.Value.Value
					case "required":
						ref.required = p.Value.Value != "false"
					default:
						l.d.errorf(file, p.KeyN.Line, "env_file: key '%s' is not supported (use path and required)", p.Key)
					}
				}
			default:
				l.d.errorf(file, it.Line, "env_file must be a path or a list of paths")
				continue
			}
			refs = append(refs, ref)
		}
	}
	svc.Content = kept
	return refs
}

// serviceEnv merges a service's env_file entries and its environment.
func (l *Lab) serviceEnv(file string, svc *Service, refs []envFileRef) map[string]string {
	env := map[string]string{}
	dir := path.Dir(file)
	for _, ref := range refs {
		p := path.Join(dir, ref.path)
		if !safePath(path.Join(dir, ref.path)) || path.IsAbs(ref.path) {
			l.d.errorf(file, ref.line, "service '%s': env_file %q must be a relative path inside the repository", svc.Name, ref.path)
			continue
		}
		if !l.exists(p) {
			if ref.required {
				l.d.errorf(file, ref.line, "service '%s': env_file %s not found; add it or mark it required: false", svc.Name, p)
			}
			continue
		}
		data, ok := l.readOptional(p)
		if !ok {
			continue
		}
		if line, name, found := envSelfReference(data); found {
			l.d.errorf(p, line, "a value refers to ${%s}, a variable of this same file; labsync does not expand references between the values of an env file: write the value out (a literal $ is $$)", name)
			continue
		}
		vars, err := dotenv.ParseWithLookup(bytes.NewReader(data), func(string) (string, bool) { return "", false })
		if err != nil {
			l.d.errorf(p, 0, "cannot parse env file: %v", err)
			continue
		}
		for k, v := range vars {
			env[k] = v
		}
	}
	for k, v := range svc.Config.Environment {
		if v == nil {
			l.d.warnf(file, svc.Line, "service '%s': environment %s has no value; labsync reads no host environment, so it is left out", svc.Name, k)
			continue
		}
		env[k] = *v
	}
	return env
}

// envDefined matches where an env file may define a variable: NAME= or
// NAME: at the start of a line, after export, or after a space (a value
// in quotes may be followed by another on the same line).
var envDefined = regexp.MustCompile(`(?:^|\s)([A-Za-z_][A-Za-z0-9_.-]*)\s*[=:]`)

// envRef matches a reference to a variable ($NAME, ${NAME...}) that is not
// an escaped dollar ($$).
var envRef = regexp.MustCompile(`(?:^|[^$])\$\{?([A-Za-z_][A-Za-z0-9_]*)`)

// envSelfReference finds a value of an env file that refers to a variable
// the same file may define, and returns its line. dotenv would expand it
// with the earlier value, so that a few lines of A1=${A0}${A0} double a
// value per line; labsync reads no host environment, so such references
// are the only expansion there is, and it refuses them.
func envSelfReference(data []byte) (line int, name string, found bool) {
	text := string(data)
	defined := map[string]bool{}
	for _, m := range envDefined.FindAllStringSubmatch(text, -1) {
		defined[m[1]] = true
	}
	for i, l := range strings.Split(text, "\n") {
		for _, m := range envRef.FindAllStringSubmatch(l, -1) {
			if defined[m[1]] {
				return i + 1, m[1], true
			}
		}
	}
	return 0, "", false
}
