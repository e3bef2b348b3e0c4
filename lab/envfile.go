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
		if line, ok := envExpansionBounded(data); !ok {
			l.d.errorf(p, line, "the values of this env file refer to each other so that they expand to more than %d bytes; write them out", MaxEnvExpansion)
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

// MaxEnvExpansion bounds what an env file's values may expand to, all
// together, once ${VAR} references to earlier values are replaced.
const MaxEnvExpansion = 4 << 20

// envRef matches a reference to a variable in an env file value.
var envRef = regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)`)

// envExpansionBounded reports whether the values of an env file stay
// within MaxEnvExpansion once expanded, from an upper bound of each
// value's length: its text plus the bound of every variable it refers to.
// It returns the line where the bound is passed. The expansion itself
// (dotenv's) would double a value per line of a file such as A1=${A0}${A0}.
func envExpansionBounded(data []byte) (int, bool) {
	lengths := map[string]int64{}
	var total int64
	last := ""
	for i, line := range strings.Split(string(data), "\n") {
		text := strings.TrimSpace(line)
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		n := int64(len(line))
		for _, m := range envRef.FindAllStringSubmatch(line, -1) {
			n += lengths[m[1]]
		}
		key, _, hasValue := strings.Cut(strings.TrimPrefix(text, "export "), "=")
		if key = strings.TrimSpace(key); hasValue && envName.MatchString(key) {
			last = key
			lengths[key] = n
		} else if last != "" {
			lengths[last] += n // a line of a multi-line value
		}
		total += n
		if total > MaxEnvExpansion || lengths[last] > MaxEnvExpansion {
			return i + 1, false
		}
	}
	return 0, true
}
