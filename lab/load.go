// Package lab reads a lab repository (lab.yaml, the SUT files and the stack's
// Compose file) from an fs.FS, validates it with every problem located by
// file and line, and compiles it into the desired state of the Docker host.
// It is pure: it reads the file system it is given and nothing else.
package lab

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/labsync/labsync/internal/yamlcheck"
	"github.com/labsync/labsync/testflinger"
)

// Default bounds on what loading a lab reads from its repository.
const (
	// MaxFileSize bounds any one file labsync reads from a lab.
	MaxFileSize = 1 << 20
	// MaxFiles bounds the files read or listed (SUT files, mounted
	// files, build context files), each counted once.
	MaxFiles = 10000
	// MaxBytes bounds the bytes read, each file counted once.
	MaxBytes = 256 << 20
	// MaxDiagnosticsPerFile bounds the problems reported for one file;
	// a last diagnostic counts the rest.
	MaxDiagnosticsPerFile = 100
)

// LoadOptions tune Load.
type LoadOptions struct {
	// DefaultName is the lab name when lab.yaml gives none, usually the
	// repository's directory name.
	DefaultName string
	// MaxFileSize bounds every file read; 0 means MaxFileSize.
	MaxFileSize int64
	// MaxFiles and MaxBytes bound everything read from the repository;
	// 0 means MaxFiles and MaxBytes.
	MaxFiles int
	MaxBytes int64
	// Policy is the host policy the lab must keep to; nil means
	// DefaultPolicy.
	Policy *Policy
	// DataRoot is labsync's data folder on the Docker host; a lab's
	// runtime data goes below <DataRoot>/labs/<lab>. Default
	// DefaultDataRoot.
	DataRoot string
}

// DefaultDataRoot is labsync's data folder when none is given.
const DefaultDataRoot = "/var/lib/labsync"

// DataMount is a relative bind mount of a folder the repository does not
// hold: runtime data (logs, backups) in a host folder of the lab, created
// when missing and never deleted by labsync.
type DataMount struct {
	Service string
	// Source is the mount's source, relative to the repository root.
	Source   string
	HostPath string
	Target   string
	ReadOnly bool
}

// Lab is a loaded, validated lab repository.
type Lab struct {
	Name   string
	Config Config
	// SUTs are the agents, sorted by name; disabled ones included.
	SUTs  []*SUT
	Stack *Stack
	// AgentImage is the agent image: a name, or a build inside the repo.
	AgentImage ImageSource
	// DataMounts are the stack's runtime-data folders, sorted.
	DataMounts []DataMount
	// Held maps each SUT held by errors in its own files, or by a
	// conflict with another SUT, to those errors. A held SUT is neither
	// created, changed nor removed; the rest of the lab is applied.
	Held map[string]Diagnostics
	// Digest is a SHA-256 of every file the lab was read from.
	Digest      string
	Diagnostics Diagnostics

	ctx      context.Context
	policy   Policy
	dataRoot string
	fsys     fs.FS
	maxSize  int64
	files    map[string][]byte
	dirs     map[string][]fs.DirEntry
	d        diags
	budget   budget
	// lines indexes the keys of files for line lookups; listings and
	// builds cache what several services share.
	lines map[string]map[string]int
	// sutFiles maps each file the SUT loader read to its SUT: the files
	// whose errors hold that SUT rather than block the lab.
	sutFiles map[string]string
	listings map[string]listing
	builds   map[string]*BuildContext
	mounted  map[string]*SourceFile
}

// SUT is one device under test: one agent container.
type SUT struct {
	Name      string
	Conf      *SourceFile
	Connector *SourceFile
	Job       *SourceFile
	// Override is sut/<name>.lab.yaml, when present.
	Override     *AgentOverride
	OverrideFile *SourceFile
	Agent        testflinger.AgentConf
	DeviceIP     string
}

// Enabled reports whether the SUT should have a running agent.
func (s *SUT) Enabled() bool {
	return s.Override == nil || s.Override.Enabled == nil || *s.Override.Enabled
}

// SourceFile is a file of the repository as it will be copied into a
// container, with a digest of each top-level YAML key for change reports.
type SourceFile struct {
	Path string
	Data []byte
	Keys map[string]string

	digest string
}

// Digest returns the SHA-256 of the file's content, computed once.
func (f *SourceFile) Digest() string {
	if f.digest == "" {
		sum := sha256.Sum256(f.Data)
		f.digest = "sha256:" + hex.EncodeToString(sum[:])
	}
	return f.digest
}

// ImageSource is where an image comes from: a name, or a build context.
type ImageSource struct {
	Name  string
	Build *BuildContext
}

// validName matches names that are valid container names, host names and
// MQTT topic levels at once.
var validName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)

// Load reads and validates the lab repository in fsys. It returns the lab
// with its warnings; when the repository has errors it returns a
// *ValidationError that lists them all, and the partly loaded lab.
func Load(fsys fs.FS, opts LoadOptions) (*Lab, error) {
	return LoadContext(context.Background(), fsys, opts)
}

// LoadContext is Load under ctx: when ctx ends, loading stops at the next
// read and returns ctx's error. Reading is bounded by opts (each file and
// folder is read once, however many services use it) and YAML expansion
// by yamlcheck's bounds, so any repository loads in bounded time and
// memory.
func LoadContext(ctx context.Context, fsys fs.FS, opts LoadOptions) (*Lab, error) {
	l := &Lab{ctx: ctx, fsys: fsys, maxSize: opts.MaxFileSize, files: map[string][]byte{}, dirs: map[string][]fs.DirEntry{},
		lines: map[string]map[string]int{}, sutFiles: map[string]string{}, listings: map[string]listing{}, builds: map[string]*BuildContext{}, mounted: map[string]*SourceFile{},
		budget: budget{maxFiles: opts.MaxFiles, maxBytes: opts.MaxBytes}}
	if l.maxSize <= 0 {
		l.maxSize = MaxFileSize
	}
	l.policy = DefaultPolicy()
	if opts.Policy != nil {
		l.policy = *opts.Policy
	}
	l.dataRoot = opts.DataRoot
	if l.dataRoot == "" {
		l.dataRoot = DefaultDataRoot
	}
	if l.budget.maxFiles <= 0 {
		l.budget.maxFiles = MaxFiles
	}
	if l.budget.maxBytes <= 0 {
		l.budget.maxBytes = MaxBytes
	}
	for _, step := range []func(){func() { l.loadConfig(opts.DefaultName) }, l.loadSUTs, l.loadStack, l.loadAgentImage, l.crossCheck} {
		if ctx.Err() != nil {
			break
		}
		step()
	}
	l.Digest = l.digest()
	l.scope()
	l.d.list.sort()
	l.Diagnostics = l.d.list.capPerFile(MaxDiagnosticsPerFile)
	if err := ctx.Err(); err != nil {
		return l, fmt.Errorf("load lab: %w", err)
	}
	if l.Diagnostics.Blocking() {
		return l, &ValidationError{Diagnostics: l.Diagnostics}
	}
	return l, nil
}

// scope gives each error about a SUT's own files to that SUT, and holds
// the SUTs that have errors: a lab of many devices is many independent
// things, and one broken file must not stop the others.
func (l *Lab) scope() {
	l.Held = map[string]Diagnostics{}
	for i := range l.d.list {
		d := &l.d.list[i]
		if d.Severity != SeverityError || d.labWide {
			continue
		}
		if d.SUT == "" {
			d.SUT = l.sutFiles[d.File]
		}
		if d.SUT != "" {
			l.Held[d.SUT] = append(l.Held[d.SUT], *d)
		}
	}
	for _, ds := range l.Held {
		ds.sort()
	}
}

// ownFile reports whether file is one of the lab's own files (lab.yaml,
// the compose file), never a SUT's, even in an agents folder at the root.
func (l *Lab) ownFile(file string) bool {
	if file == "lab.yaml" || slices.Contains(StackFiles, file) {
		return true
	}
	stack, _ := l.stackFile()
	return file == stack
}

// HeldNames returns the held SUTs, sorted.
func (l *Lab) HeldNames() []string {
	return sortedKeys(l.Held)
}

// FS returns the file system the lab was loaded from (for image builds).
func (l *Lab) FS() fs.FS { return l.fsys }

func (l *Lab) loadConfig(defaultName string) {
	const file = "lab.yaml"
	data, ok := l.readOptional(file)
	if ok {
		root, f := yamlcheck.Parse(data)
		if f != nil {
			l.d.add(file, *f)
		} else if root != nil {
			l.d.add(file, yamlcheck.Decode(root, &l.Config)...)
			l.checkConfig(file, root)
		}
	}
	l.Name = l.Config.Name
	if l.Name == "" {
		l.Name = sanitizeName(defaultName)
		if l.Name == "" {
			l.Name = "lab"
		}
	}
	if !validName.MatchString(l.Name) {
		l.d.errorf(file, lineOf(file, "name", l), "lab name %q is not valid; use letters, digits, '.', '_' and '-', starting with a letter or digit", l.Name)
	}
}

// lineOf finds the line of a dotted key in a file already read; 0 when
// unknown. Used only for messages about values checked after decoding.
// Each file is parsed and indexed once, however many messages it has.
func lineOf(file, key string, l *Lab) int {
	idx, ok := l.lines[file]
	if !ok {
		idx = map[string]int{}
		if root, f := yamlcheck.Parse(l.files[file]); f == nil && root != nil {
			indexLines(root, "", idx)
		}
		l.lines[file] = idx
	}
	// The nearest key that exists: "agents.networks.lab" falls back to
	// "agents.networks".
	for k := key; k != ""; {
		if line, ok := idx[k]; ok {
			return line
		}
		i := strings.LastIndexByte(k, '.')
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return 0
}

// indexLines records the line of every key of the mappings below n, by
// dotted path; a later key wins, as for duplicate keys in YAML.
func indexLines(n *yaml.Node, prefix string, idx map[string]int) {
	for _, p := range yamlcheck.Pairs(n) {
		k := p.Key
		if prefix != "" {
			k = prefix + "." + k
		}
		idx[k] = p.KeyN.Line
		if yamlcheck.IsMap(p.Value) {
			indexLines(p.Value, k, idx)
		}
	}
}

var restartPolicies = []string{"no", "always", "unless-stopped", "on-failure"}

// validRestart accepts Docker's restart policies, on-failure with a count.
func validRestart(r string) bool {
	name, count, hasCount := strings.Cut(r, ":")
	if hasCount {
		return name == "on-failure" && strings.Trim(count, "0123456789") == "" && count != ""
	}
	return slices.Contains(restartPolicies, name)
}

var healthForms = []string{"CMD", "CMD-SHELL", "NONE"}

func (l *Lab) checkConfig(file string, root *yaml.Node) {
	c := &l.Config
	if c.Agents.Dir != "" && !safePath(c.Agents.Dir) {
		l.d.errorf(file, lineOf(file, "agents.dir", l), "'agents.dir' %q must be a relative path inside the repository", c.Agents.Dir)
	}
	if p := c.Adopt.ComposeProject; p != "" && !objectName.MatchString(p) {
		l.d.errorf(file, lineOf(file, "adopt.compose_project", l), "'adopt.compose_project' %q is not a compose project name; give it as docker volume ls shows its volumes' prefix", p)
	}
	if d := c.DataDir; d != "" {
		switch {
		case !path.IsAbs(d):
			l.d.errorf(file, lineOf(file, "data_dir", l), "'data_dir' %q must be an absolute folder on the Docker host", d)
		case !underPrefix(d, l.policy.BindPaths):
			l.d.errorf(file, lineOf(file, "data_dir", l), "'data_dir' %s is a host folder the host policy does not allow; an operator allows it with --allow-bind-paths %s, or leave data_dir out (runtime data then goes under labsync's data folder)", d, d)
		}
	}
	if c.Stack != "" && !safePath(c.Stack) {
		l.d.errorf(file, lineOf(file, "stack", l), "'stack' %q must be a relative path inside the repository", c.Stack)
	}
	if c.Agents.Image.Name != "" && c.Agents.Image.Build != nil {
		l.d.errorf(file, lineOf(file, "agents.image", l), "'agents.image' sets both name and build; keep one")
	}
	if b := c.Agents.Image.Build; b != nil && (b.Context == "" || !safePath(b.Context)) {
		l.d.errorf(file, lineOf(file, "agents.image.build", l), "'agents.image.build.context' must be a relative folder inside the repository, e.g. images/agent")
	}
	if r := c.Agents.Restart; r != "" && !validRestart(r) {
		l.d.errorf(file, lineOf(file, "agents.restart", l), "'agents.restart' is %q; use one of %s", r, strings.Join(restartPolicies, ", "))
	}
	if bp := c.Agents.Update.BusyPolicy; bp != "" && bp != BusyPolicyRecreate && bp != BusyPolicyWait {
		l.d.errorf(file, lineOf(file, "agents.update.busy_policy", l), "'agents.update.busy_policy' is %q; use recreate or wait", bp)
	}
	if c.Agents.Update.Parallelism < 0 {
		l.d.errorf(file, lineOf(file, "agents.update.parallelism", l), "'agents.update.parallelism' must be 1 or more")
	}
	if f := c.Prune.MaxFraction; f != nil && (*f < 0 || *f > 1) {
		l.d.errorf(file, lineOf(file, "prune.max_fraction", l), "'prune.max_fraction' is %v; use a fraction between 0 and 1, e.g. 0.5", *f)
	}
	if p := c.ContainerPrefix; p != "" && !validName.MatchString(p) {
		l.d.errorf(file, lineOf(file, "container_prefix", l), "'container_prefix' %q is not valid in a container name", p)
	}
	if hc := c.Agents.Healthcheck; hc != nil && len(hc.Test) > 0 && !slices.Contains(healthForms, hc.Test[0]) {
		l.d.errorf(file, lineOf(file, "agents.healthcheck.test", l), "'agents.healthcheck.test' must start with CMD, CMD-SHELL or NONE, e.g. [CMD, labsync-agent, healthcheck]")
	}
	for net, a := range c.Agents.Networks {
		if a.IPv4Address != "" {
			l.d.errorf(file, lineOf(file, "agents.networks", l), "'agents.networks.%s.ipv4_address' would give every agent the same address; set it per agent in sut/<name>.lab.yaml", net)
		}
	}
	if strings.ContainsAny(c.MQTT.Prefix, "+#\x00") {
		l.d.errorf(file, lineOf(file, "mqtt.prefix", l), "'mqtt.prefix' %q contains an MQTT wildcard (+ or #); use plain topic levels", c.MQTT.Prefix)
	}
	for k := range c.Agents.Env {
		if !validEnvName(k) {
			l.d.errorf(file, lineOf(file, "agents.env", l), "'agents.env' key %q is not a valid environment variable name", k)
		}
		if _, dup := c.Agents.Secrets[k]; dup {
			l.d.errorf(file, lineOf(file, "agents.secrets", l), "'%s' is set in both agents.env and agents.secrets; keep it in secrets", k)
		}
	}
	for k, v := range c.Agents.Secrets {
		if !validEnvName(k) || !validName.MatchString(v) {
			l.d.errorf(file, lineOf(file, "agents.secrets", l), "'agents.secrets' maps %q to %q; map an environment variable name to a secret name made of letters, digits, '.', '_' and '-'", k, v)
		}
	}
	seenPaths := map[string]string{}
	for _, k := range []string{"agents.files.conf", "agents.files.connector", "agents.files.job"} {
		v := map[string]string{"agents.files.conf": c.Agents.Files.Conf, "agents.files.connector": c.Agents.Files.Connector, "agents.files.job": c.Agents.Files.Job}[k]
		if v != "" && !strings.HasPrefix(v, "/") {
			l.d.errorf(file, lineOf(file, k, l), "'%s' is %q; give an absolute path inside the container", k, v)
		}
		if prev, dup := seenPaths[v]; dup && v != "" {
			l.d.errorf(file, lineOf(file, k, l), "'%s' is the same path as '%s'; one file would overwrite the other", k, prev)
		}
		seenPaths[v] = k
	}
	_ = root
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func validEnvName(s string) bool { return envName.MatchString(s) }

// safePath reports whether p is a relative slash path that stays inside the
// repository.
func safePath(p string) bool {
	if p == "" || strings.HasPrefix(p, "/") || strings.Contains(p, "\\") {
		return false
	}
	c := path.Clean(p)
	return c == "." || fs.ValidPath(c)
}

func sanitizeName(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			b.WriteRune(r)
		default:
			b.WriteRune('-')
		}
	}
	return strings.TrimLeft(b.String(), "-_.")
}

// entry finds the directory entry of name, reading its folder once.
func (l *Lab) entry(name string) (fs.DirEntry, error) {
	dir := path.Dir(name)
	ents, ok := l.dirs[dir]
	if !ok {
		if err := l.ctx.Err(); err != nil {
			return nil, err
		}
		var err error
		ents, err = fs.ReadDir(l.fsys, dir)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		l.dirs[dir] = ents
	}
	base := path.Base(name)
	for _, e := range ents {
		if e.Name() == base {
			return e, nil
		}
	}
	return nil, fs.ErrNotExist
}

// exists reports whether the regular file or folder name exists.
func (l *Lab) exists(name string) bool {
	_, err := l.entry(name)
	return err == nil
}

// readOptional reads a file that may be absent. Errors are diagnostics.
func (l *Lab) readOptional(name string) ([]byte, bool) {
	e, err := l.entry(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false
	}
	if err != nil {
		l.d.errorf(name, 0, "cannot read: %v", err)
		return nil, false
	}
	return l.readEntry(name, e)
}

// hasErrorIn reports whether an error was found in file.
func (l *Lab) hasErrorIn(file string) bool {
	for _, d := range l.d.list {
		if d.File == file && d.Severity == SeverityError {
			return true
		}
	}
	return false
}

func (l *Lab) hasDiag(file string) bool {
	for _, d := range l.d.list {
		if d.File == file {
			return true
		}
	}
	return false
}

func (l *Lab) readEntry(name string, e fs.DirEntry) ([]byte, bool) {
	if data, ok := l.files[name]; ok {
		return data, true
	}
	if l.ctx.Err() != nil {
		return nil, false
	}
	if e.Type()&fs.ModeSymlink != 0 {
		l.d.errorf(name, 0, "is a symbolic link; labsync does not follow links, commit the file itself")
		return nil, false
	}
	if e.IsDir() {
		l.d.errorf(name, 0, "is a folder, expected a file")
		return nil, false
	}
	info, err := e.Info()
	if err != nil {
		l.d.errorf(name, 0, "cannot read: %v", err)
		return nil, false
	}
	if info.Size() > l.maxSize {
		l.d.errorf(name, 0, "is %d bytes, over the %d-byte limit for lab files; keep large data out of the lab repository", info.Size(), l.maxSize)
		return nil, false
	}
	if !l.spend(name, 1, info.Size()) {
		return nil, false
	}
	data, err := fs.ReadFile(l.fsys, name)
	if err != nil {
		l.d.errorf(name, 0, "cannot read: %v", err)
		return nil, false
	}
	if int64(len(data)) > l.maxSize {
		l.d.errorf(name, 0, "is over the %d-byte limit for lab files", l.maxSize)
		return nil, false
	}
	l.files[name] = data
	return data, true
}

func (l *Lab) loadAgentImage() {
	c := l.Config.Agents.Image
	switch {
	case c.Name != "":
		l.AgentImage = ImageSource{Name: c.Name}
	case c.Build != nil && safePath(c.Build.Context):
		l.AgentImage = ImageSource{Build: l.loadBuild("lab.yaml", lineOf("lab.yaml", "agents.image.build", l), "agent", path.Clean(c.Build.Context), c.Build.Dockerfile, c.Build.Args)}
	case l.exists(path.Join(DefaultAgentBuildDir, "Dockerfile")):
		l.AgentImage = ImageSource{Build: l.loadBuild("", 0, "agent", DefaultAgentBuildDir, "", nil)}
	default:
		l.AgentImage = ImageSource{Name: DefaultAgentImage}
	}
}

func (l *Lab) digest() string {
	names := make([]string, 0, len(l.files))
	for n := range l.files {
		names = append(names, n)
	}
	sort.Strings(names)
	h := sha256.New()
	for _, n := range names {
		fmt.Fprintf(h, "%s\x00%d\x00", n, len(l.files[n]))
		h.Write(l.files[n])
	}
	return hex.EncodeToString(h.Sum(nil))
}
