package lab

import (
	"bytes"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"gopkg.in/yaml.v3"

	"github.com/labsync/labsync/internal/yamlcheck"
)

// objectName matches valid Docker network and volume names. Anything else
// could be read as something else: "container:x" as a network mode.
var objectName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$`)

// volumeName is the Docker name of a volume of the compose file that does
// not name it: the one lab.yaml's adopt maps it to, the compose project's
// (<project>_<key>) when the lab took a compose project over, else
// <lab>_<key>.
func (l *Lab) volumeName(key string) string {
	a := l.Config.Adopt
	if name := a.Volumes[key]; name != "" {
		return name
	}
	return l.objectName(key)
}

// objectName is the Docker name of a network or volume of the compose
// file that does not name it: <lab>_<key>, or the compose project's
// <project>_<key> when the lab took that project over (its networks and
// volumes are reused as they are).
func (l *Lab) objectName(key string) string {
	if p := l.Config.Adopt.ComposeProject; p != "" {
		return p + "_" + key
	}
	return l.Name + "_" + key
}

// dockerNetworks are the networks every engine has.
var dockerNetworks = []string{"host", "bridge", "none"}

// MaxComposeNodes bounds the YAML nodes of the compose file: compose-go
// spends far more memory per node than labsync's own checks. A stack of
// 200 services of 20 keys each is about 10,000.
const MaxComposeNodes = 25_000

// StackFiles are the compose files looked for, in order, when lab.yaml does
// not name one.
var StackFiles = []string{"docker-compose.yaml", "docker-compose.yml", "compose.yaml", "compose.yml", "stack/compose.yaml"}

// Stack is the lab's base stack, read from its Compose file.
type Stack struct {
	File     string
	Services []*Service
	// Networks and Volumes are keyed by their name in the compose file.
	Networks map[string]*StackNetwork
	Volumes  map[string]*StackVolume
}

// Service is one stack service.
type Service struct {
	Name   string
	Line   int
	Config types.ServiceConfig
	// Env is the service's environment: env_file entries, then environment.
	Env map[string]string
	// Build is the service's build context, when it has one.
	Build *BuildContext
	// Files are repository files bind-mounted with a relative source; they
	// are copied into the container instead.
	Files []MountedFile
	// Data are relative bind mounts of folders the repository does not
	// hold: runtime data in host folders of the lab.
	Data []DataMount
}

// isRuntimeData reports whether a relative bind mount's source is runtime
// data rather than repository files: the repository does not hold it, or
// holds it only as a placeholder folder of hidden files (.gitkeep).
func (l *Lab) isRuntimeData(rel string) bool {
	e, err := l.entry(rel)
	if err != nil {
		return true
	}
	if !e.IsDir() {
		return false
	}
	ents, err := fs.ReadDir(l.fsys, rel)
	if err != nil {
		return false
	}
	for _, c := range ents {
		if !strings.HasPrefix(c.Name(), ".") {
			return false
		}
	}
	return true
}

// dataDir is the host folder of the lab's runtime data.
func (l *Lab) dataDir() string {
	if d := l.Config.DataDir; d != "" {
		return path.Clean(d)
	}
	return path.Join(l.dataRoot, "labs", l.Name)
}

// MountedFile is a repository file that a service mounts.
type MountedFile struct {
	Target string
	Mode   int64
	File   *SourceFile
}

// StackNetwork is a network the stack declares.
type StackNetwork struct {
	Key    string
	Name   string
	Line   int
	Config types.NetworkConfig
}

// StackVolume is a named volume the stack declares.
type StackVolume struct {
	Key    string
	Name   string
	Line   int
	Config types.VolumeConfig
}

// keySpec is the set of Compose keys labsync implements, as a tree.
type keySpec struct {
	keys  map[string]*keySpec // allowed keys of a mapping
	named *keySpec            // a mapping of user names to values of this spec
	items *keySpec            // a list whose mapping items follow this spec
	any   bool                // anything goes below
}

var leaf = &keySpec{any: true}

func mapOf(keys ...string) *keySpec {
	s := &keySpec{keys: map[string]*keySpec{}}
	for _, k := range keys {
		s.keys[k] = leaf
	}
	return s
}

func (s *keySpec) with(key string, sub *keySpec) *keySpec { s.keys[key] = sub; return s }

var composeTop = mapOf("version", "name").
	with("services", &keySpec{named: serviceSpec}).
	with("networks", &keySpec{named: networkSpec}).
	with("volumes", &keySpec{named: mapOf("name", "driver", "driver_opts")})

var serviceSpec = mapOf("image", "command", "entrypoint", "environment", "env_file", "expose",
	"extra_hosts", "dns", "restart", "labels", "hostname", "domainname", "container_name",
	"privileged", "sysctls", "cap_add", "devices", "mem_limit", "user", "working_dir", "tty", "stdin_open").
	with("build", mapOf("context", "dockerfile", "args")).
	with("volumes", &keySpec{items: mapOf("type", "source", "target", "read_only")}).
	with("networks", &keySpec{named: mapOf("ipv4_address", "aliases")}).
	with("ports", &keySpec{items: mapOf("target", "published", "host_ip", "protocol")}).
	with("healthcheck", mapOf("test", "interval", "timeout", "retries", "start_period", "disable")).
	with("depends_on", &keySpec{named: mapOf("condition")})

var networkSpec = mapOf("name", "driver", "driver_opts").
	with("ipam", mapOf().with("config", &keySpec{items: mapOf("subnet", "gateway", "ip_range")}))

// checkKeys reports every key of n that spec does not allow. Keys starting
// with x- are Compose extensions and are allowed (and ignored) anywhere.
func checkComposeKeys(n *yaml.Node, spec *keySpec, where string, out *[]yamlcheck.Finding) {
	n = yamlcheck.Resolve(n)
	if spec == nil || spec.any || n == nil {
		return
	}
	switch {
	case spec.keys != nil:
		known := make([]string, 0, len(spec.keys))
		for k := range spec.keys {
			known = append(known, k)
		}
		for _, p := range yamlcheck.Pairs(n) {
			if strings.HasPrefix(p.Key, "x-") {
				continue
			}
			sub, ok := spec.keys[p.Key]
			if !ok {
				msg := yamlcheck.UnknownKey(p.Key, known)
				if yamlcheck.Suggest(p.Key, known) == "" {
					sort.Strings(known)
					msg = fmt.Sprintf("%s: key '%s' is not supported by labsync (supported here: %s)", where, p.Key, strings.Join(known, ", "))
				} else {
					msg = where + ": " + msg
				}
				*out = append(*out, yamlcheck.Errorf(p.KeyN, "%s", msg))
				continue
			}
			checkComposeKeys(p.Value, sub, where+"."+p.Key, out)
		}
	case spec.named != nil:
		if yamlcheck.IsSeq(n) { // short list syntax: names only
			return
		}
		for _, p := range yamlcheck.Pairs(n) {
			checkComposeKeys(p.Value, spec.named, where+"."+p.Key, out)
		}
	case spec.items != nil:
		for _, it := range yamlcheck.Items(n) {
			if yamlcheck.IsMap(it) {
				checkComposeKeys(it, spec.items, where, out)
			}
		}
	}
}

// unsetVar finds ${NAME} without a default; $${NAME} is an escaped dollar.
var unsetVar = regexp.MustCompile(`(?:^|[^$])\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

func (l *Lab) stackFile() (string, int) {
	if l.Config.Stack != "" {
		if !safePath(l.Config.Stack) {
			return "", 0
		}
		return path.Clean(l.Config.Stack), lineOf("lab.yaml", "stack", l)
	}
	for _, f := range StackFiles {
		if l.exists(f) {
			return f, 0
		}
	}
	return "", 0
}

func (l *Lab) loadStack() {
	file, declLine := l.stackFile()
	if file == "" {
		return
	}
	data, ok := l.readOptional(file)
	if !ok {
		if !l.hasDiag(file) {
			l.d.errorf("lab.yaml", declLine, "stack file %s not found; fix 'stack' or add the file", file)
		}
		return
	}
	bounds := yamlcheck.DefaultBounds()
	bounds.MaxNodes = MaxComposeNodes
	root, f := yamlcheck.ParseBounded(data, bounds)
	if f != nil {
		l.d.add(file, *f)
		return
	}
	if root == nil {
		l.d.warnf(file, 0, "the compose file is empty; the lab has no stack services")
		return
	}
	if !yamlcheck.IsMap(root) {
		l.d.errorf(file, root.Line, "a compose file must be a mapping with services:, networks: and volumes:")
		return
	}
	var fs []yamlcheck.Finding
	checkComposeKeys(root, composeTop, "compose file", &fs)
	// Re-word the top-level messages: "compose file.services.redis" reads
	// better as "service 'redis'".
	for i := range fs {
		fs[i].Msg = rewordWhere(fs[i].Msg)
	}
	l.d.add(file, fs...)
	st := &Stack{File: file, Networks: map[string]*StackNetwork{}, Volumes: map[string]*StackVolume{}}
	serviceLines := map[string]int{}
	envFiles := map[string][]envFileRef{}
	var kept []*yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		switch k.Value {
		case "version":
			l.d.warnf(file, k.Line, "the top-level 'version' is obsolete and ignored; remove it")
			continue
		case "name":
			l.d.warnf(file, k.Line, "the top-level 'name' is ignored: labsync names networks and volumes after the lab (name: in lab.yaml); remove it")
			continue
		case "services":
			for _, p := range yamlcheck.Pairs(v) {
				serviceLines[p.Key] = p.KeyN.Line
				if !validName.MatchString(p.Key) || strings.HasSuffix(p.Key, AsideSuffix) {
					l.d.errorf(file, p.KeyN.Line, "service name %q is not valid; use letters, digits, '.', '_' and '-' (not ending in %s)", p.Key, AsideSuffix)
				}
				envFiles[p.Key] = l.takeEnvFiles(file, p.Value)
			}
		case "networks":
			for _, p := range yamlcheck.Pairs(v) {
				sn := &StackNetwork{Key: p.Key, Line: p.KeyN.Line, Name: explicitName(p.Value, l.objectName(p.Key))}
				switch {
				case slices.Contains(dockerNetworks, sn.Name):
					l.d.errorf(file, p.KeyN.Line, "network '%s' is named %s, one of Docker's own networks; labsync creates the networks it uses, so give it another name", p.Key, sn.Name)
				case !objectName.MatchString(sn.Name) && validName.MatchString(l.Name):
					l.d.errorf(file, p.KeyN.Line, "network '%s': %q is not a valid network name; use letters, digits, '.', '_' and '-', starting with a letter or digit", p.Key, sn.Name)
				}
				st.Networks[p.Key] = sn
			}
		case "volumes":
			for _, p := range yamlcheck.Pairs(v) {
				sv := &StackVolume{Key: p.Key, Line: p.KeyN.Line, Name: explicitName(p.Value, l.volumeName(p.Key))}
				if !objectName.MatchString(sv.Name) && validName.MatchString(l.Name) {
					l.d.errorf(file, p.KeyN.Line, "volume '%s': %q is not a valid volume name; use letters, digits, '.', '_' and '-', starting with a letter or digit", p.Key, sv.Name)
				}
				st.Volumes[p.Key] = sv
			}
		}
		kept = append(kept, k, v)
	}
	root.Content = kept
	l.checkReferences(file, root, st)
	for _, m := range unsetVar.FindAllSubmatchIndex(data, -1) {
		line := bytes.Count(data[:m[2]], []byte("\n")) + 1
		l.d.warnf(file, line, "variable ${%s} has no default; labsync reads no host environment, so it becomes empty; write the value or ${%s:-default}", data[m[2]:m[3]], data[m[2]:m[3]])
	}
	if l.hasErrorIn(file) || l.hasErrorIn("lab.yaml") {
		// compose-go would only repeat these problems without lines.
		l.Stack = st
		return
	}
	clean, err := yaml.Marshal(root)
	if err != nil {
		l.d.errorf(file, 0, "cannot re-encode the compose file: %v", err)
		return
	}
	dir := path.Dir(file)
	project, err := loader.LoadWithContext(l.ctx, types.ConfigDetails{
		WorkingDir:  path.Join("/lab", dir),
		ConfigFiles: []types.ConfigFile{{Filename: file, Content: clean}},
		Environment: types.Mapping{},
	}, func(o *loader.Options) {
		o.SetProjectName(loader.NormalizeProjectName(l.Name), true)
		o.SkipResolveEnvironment = true
		o.ResolvePaths = false
		o.SkipInclude = true
		o.SkipExtends = true
		// labsync checks references and dependencies itself, with lines.
		o.SkipConsistencyCheck = true
	})
	if err != nil {
		l.d.errorf(file, 0, "%v", err)
		l.Stack = st
		return
	}
	for key, nc := range project.Networks {
		if sn := st.Networks[key]; sn != nil {
			sn.Config = nc
		} else if key == "default" {
			st.Networks[key] = &StackNetwork{Key: key, Name: l.objectName(key), Config: nc}
		}
	}
	for _, key := range sortedKeys(l.Config.Adopt.Volumes) {
		if st.Volumes[key] == nil {
			l.d.errorf("lab.yaml", lineOf("lab.yaml", "adopt.volumes", l), "'adopt.volumes' maps '%s', which is not a volume of %s", key, file)
		} else if !objectName.MatchString(l.Config.Adopt.Volumes[key]) {
			l.d.errorf("lab.yaml", lineOf("lab.yaml", "adopt.volumes", l), "'adopt.volumes.%s' %q is not a valid volume name", key, l.Config.Adopt.Volumes[key])
		}
	}
	for key, vc := range project.Volumes {
		if sv := st.Volumes[key]; sv != nil {
			sv.Config = vc
		}
	}
	for name, sc := range project.Services {
		svc := &Service{Name: name, Line: serviceLines[name], Config: sc}
		svc.Env = l.serviceEnv(file, svc, envFiles[name])
		l.checkService(file, dir, svc, st)
		st.Services = append(st.Services, svc)
	}
	sort.Slice(st.Services, func(i, j int) bool { return st.Services[i].Name < st.Services[j].Name })
	l.checkDependencies(file, st)
	l.checkPolicy(file, st)
	sort.Slice(l.DataMounts, func(i, j int) bool {
		a, b := l.DataMounts[i], l.DataMounts[j]
		if a.Service != b.Service {
			return a.Service < b.Service
		}
		return a.Source < b.Source
	})
	l.Stack = st
}

func rewordWhere(msg string) string {
	msg = strings.Replace(msg, "compose file.services.", "service ", 1)
	msg = strings.Replace(msg, "compose file.networks.", "network ", 1)
	msg = strings.Replace(msg, "compose file.volumes.", "volume ", 1)
	if strings.HasPrefix(msg, "service ") || strings.HasPrefix(msg, "network ") || strings.HasPrefix(msg, "volume ") {
		parts := strings.SplitN(msg, ": ", 2)
		head := parts[0]
		sp := strings.SplitN(head, " ", 2)
		name, sub, _ := strings.Cut(sp[1], ".")
		head = fmt.Sprintf("%s '%s'", sp[0], name)
		if sub != "" {
			head += " " + sub
		}
		if len(parts) == 2 {
			return head + ": " + parts[1]
		}
		return head
	}
	return strings.Replace(msg, "compose file: ", "", 1)
}

func explicitName(n *yaml.Node, def string) string {
	for _, p := range yamlcheck.Pairs(n) {
		if p.Key == "name" && yamlcheck.IsScalar(p.Value) {
			return p.Value.Value
		}
	}
	return def
}

// checkReferences checks that services use only declared networks and
// volumes, before compose-go does so without line numbers.
func (l *Lab) checkReferences(file string, root *yaml.Node, st *Stack) {
	for _, top := range yamlcheck.Pairs(root) {
		if top.Key != "services" {
			continue
		}
		for _, svc := range yamlcheck.Pairs(top.Value) {
			for _, p := range yamlcheck.Pairs(svc.Value) {
				switch p.Key {
				case "networks":
					names := map[string]*yaml.Node{}
					for _, it := range yamlcheck.Items(p.Value) {
						names[it.Value] = it
					}
					for _, q := range yamlcheck.Pairs(p.Value) {
						names[q.Key] = q.KeyN
					}
					for name, n := range names {
						if _, ok := st.Networks[name]; !ok && name != "default" {
							l.d.errorf(file, n.Line, "service '%s' uses network '%s', which is not declared under the top-level networks:", svc.Key, name)
						}
					}
				case "volumes":
					for _, it := range yamlcheck.Items(p.Value) {
						src := ""
						if yamlcheck.IsScalar(it) {
							src, _, _ = strings.Cut(it.Value, ":")
							if !strings.Contains(it.Value, ":") {
								src = ""
							}
						} else {
							for _, q := range yamlcheck.Pairs(it) {
								if q.Key == "source" {
									src = q.Value.Value
								}
							}
						}
						if src == "" || strings.HasPrefix(src, ".") || strings.HasPrefix(src, "/") || strings.HasPrefix(src, "~") || strings.HasPrefix(src, "$") {
							continue
						}
						if _, ok := st.Volumes[src]; !ok {
							l.d.errorf(file, it.Line, "service '%s' mounts volume '%s', which is not declared under the top-level volumes:", svc.Key, src)
						}
					}
				}
			}
		}
	}
}

// checkService checks what compose-go accepts but labsync cannot do, and
// resolves the service's build context and mounted repository files.
func (l *Lab) checkService(file, dir string, svc *Service, st *Stack) {
	sc := &svc.Config
	if sc.Image == "" && sc.Build == nil {
		l.d.errorf(file, svc.Line, "service '%s' has neither image nor build; give one", svc.Name)
	}
	if sc.Build != nil {
		ctx := sc.Build.Context
		if ctx == "" {
			ctx = "."
		}
		p := path.Join(dir, ctx)
		if path.IsAbs(ctx) || strings.Contains(ctx, "://") || !safePath(p) {
			l.d.errorf(file, svc.Line, "service '%s': build context %q must be a folder inside the repository", svc.Name, ctx)
		} else {
			args := map[string]string{}
			for k, v := range sc.Build.Args {
				if v != nil {
					args[k] = *v
				}
			}
			svc.Build = l.loadBuild(file, svc.Line, svc.Name, path.Clean(p), sc.Build.Dockerfile, args)
		}
	}
	if r := sc.Restart; r != "" && !validRestart(r) {
		l.d.errorf(file, svc.Line, "service '%s': restart %q; use one of %s", svc.Name, r, strings.Join(restartPolicies, ", "))
	}
	for _, v := range sc.Volumes {
		switch v.Type {
		case types.VolumeTypeBind:
			if path.IsAbs(v.Source) {
				continue
			}
			rel := path.Join(dir, v.Source)
			if !safePath(rel) {
				l.d.errorf(file, svc.Line, "service '%s': bind mount source %q leaves the repository; use a path inside it or an absolute host path", svc.Name, v.Source)
				continue
			}
			if l.isRuntimeData(path.Clean(rel)) {
				m := DataMount{Service: svc.Name, Source: path.Clean(rel), HostPath: path.Join(l.dataDir(), path.Clean(rel)), Target: v.Target, ReadOnly: v.ReadOnly}
				svc.Data = append(svc.Data, m)
				l.DataMounts = append(l.DataMounts, m)
				continue
			}
			l.mountRepoPath(file, svc, path.Clean(rel), v.Target)
		case types.VolumeTypeVolume, "":
			switch {
			case v.Source == "":
				l.d.errorf(file, svc.Line, "service '%s': anonymous volume %s is lost at every recreate; name it (e.g. data:%s) and declare it under volumes:", svc.Name, v.Target, v.Target)
			case strings.Contains(v.Source, "/"):
				l.d.errorf(file, svc.Line, "service '%s': a named volume's source is a name, not the path %q; for a host path use type: bind", svc.Name, v.Source)
			case st.Volumes[v.Source] == nil:
				// Checked again after interpolation: ${X:-name} is a name.
				l.d.errorf(file, svc.Line, "service '%s' mounts volume '%s', which is not declared under the top-level volumes:", svc.Name, v.Source)
			}
		default:
			l.d.errorf(file, svc.Line, "service '%s': volume type %q is not supported; use volume or bind", svc.Name, v.Type)
		}
	}
}

// mountRepoPath turns a relative bind mount into files copied into the
// container: a file, or every file below a folder.
func (l *Lab) mountRepoPath(file string, svc *Service, rel, target string) {
	e, err := l.entry(rel)
	if err != nil {
		l.d.errorf(file, svc.Line, "service '%s': bind mount source %s is not in the repository; labsync copies repository files into the container, so commit it", svc.Name, rel)
		return
	}
	add := func(p, t string, mode fs.FileMode) {
		sf := l.mounted[p] // shared by every service that mounts it
		if sf == nil {
			data, ok := l.readOptional(p)
			if !ok {
				return
			}
			sf = &SourceFile{Path: p, Data: data}
			l.mounted[p] = sf
		}
		m := int64(0o644)
		if mode.Perm()&0o111 != 0 {
			m = 0o755
		}
		svc.Files = append(svc.Files, MountedFile{Target: t, Mode: m, File: sf})
	}
	if !e.IsDir() {
		var mode fs.FileMode
		if info, err := e.Info(); err == nil {
			mode = info.Mode()
		}
		add(rel, target, mode)
		return
	}
	files, err := l.contextFiles(rel, "")
	if err != nil {
		l.reportContextError(file, svc.Line, fmt.Sprintf("service '%s': bind mount source %s", svc.Name, rel), err)
		return
	}
	for _, f := range files {
		add(path.Join(rel, f.Path), path.Join(target, f.Path), f.Mode)
	}
}

var dependencyConditions = []string{types.ServiceConditionStarted, types.ServiceConditionHealthy, types.ServiceConditionCompletedSuccessfully}

func (l *Lab) checkDependencies(file string, st *Stack) {
	byName := map[string]*Service{}
	for _, s := range st.Services {
		byName[s.Name] = s
	}
	for _, s := range st.Services {
		for dep, d := range s.Config.DependsOn {
			target := byName[dep]
			if target == nil {
				l.d.errorf(file, s.Line, "service '%s' depends on '%s', which is not a service of this file", s.Name, dep)
				continue
			}
			if !slices.Contains(dependencyConditions, d.Condition) {
				l.d.errorf(file, s.Line, "service '%s': depends_on condition %q; use service_started or service_healthy", s.Name, d.Condition)
			}
			if d.Condition == types.ServiceConditionCompletedSuccessfully {
				l.d.errorf(file, s.Line, "service '%s': condition service_completed_successfully is not supported by labsync; use service_started or service_healthy", s.Name)
			}
			if d.Condition == types.ServiceConditionHealthy && !hasHealthcheck(target.Config.HealthCheck) {
				l.d.errorf(file, s.Line, "service '%s' waits for '%s' to be healthy, but '%s' has no healthcheck; add one or use service_started", s.Name, dep, dep)
			}
		}
	}
	// Cycles.
	state := map[string]int{}
	var visit func(s *Service, trail []string) bool
	visit = func(s *Service, trail []string) bool {
		switch state[s.Name] {
		case 1:
			l.d.errorf(file, s.Line, "depends_on forms a cycle: %s", strings.Join(append(trail, s.Name), " -> "))
			return false
		case 2:
			return true
		}
		state[s.Name] = 1
		deps := make([]string, 0, len(s.Config.DependsOn))
		for d := range s.Config.DependsOn {
			deps = append(deps, d)
		}
		sort.Strings(deps)
		for _, d := range deps {
			if t := byName[d]; t != nil && !visit(t, append(trail, s.Name)) {
				return false
			}
		}
		state[s.Name] = 2
		return true
	}
	for _, s := range st.Services {
		if state[s.Name] == 0 && !visit(s, nil) {
			return
		}
	}
}

func (l *Lab) serviceContainerName(svc *Service) string {
	if svc.Config.ContainerName != "" {
		return svc.Config.ContainerName
	}
	return l.Config.ContainerPrefix + svc.Name
}
