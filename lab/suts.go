package lab

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"path"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/labsync/labsync/internal/yamlcheck"
	"github.com/labsync/labsync/testflinger"
)

// sutFileKind classifies the files of the agents folder.
func sutFileKind(base string) (name, kind string) {
	switch {
	case strings.HasSuffix(base, "_snappy.yaml"):
		return strings.TrimSuffix(base, "_snappy.yaml"), "connector"
	case strings.HasSuffix(base, ".lab.yaml"):
		return strings.TrimSuffix(base, ".lab.yaml"), "override"
	case strings.HasSuffix(base, ".conf"):
		return strings.TrimSuffix(base, ".conf"), "conf"
	case strings.HasSuffix(base, ".yaml"):
		return strings.TrimSuffix(base, ".yaml"), "job"
	}
	return "", ""
}

func (l *Lab) agentsDir() string {
	if l.Config.Agents.Dir != "" && safePath(l.Config.Agents.Dir) {
		return path.Clean(l.Config.Agents.Dir)
	}
	return DefaultAgentsDir
}

func (l *Lab) loadSUTs() {
	dir := l.agentsDir()
	if e, err := l.entry(dir); err == nil && e.Type()&fs.ModeSymlink != 0 {
		l.d.errorf(dir, 0, "is a symbolic link; labsync does not follow links, commit the folder itself")
		return
	}
	ents, err := fs.ReadDir(l.fsys, dir)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		l.d.errorf(dir, 0, "cannot read the agents folder: %v", err)
		return
	}
	byName := map[string]*SUT{}
	get := func(name string) *SUT {
		s := byName[name]
		if s == nil {
			s = &SUT{Name: name}
			byName[name] = s
		}
		return s
	}
	for _, e := range ents {
		file := path.Join(dir, e.Name())
		if !l.spend(file, 1, 0) { // counted once, listed or read
			return
		}
		if e.IsDir() {
			l.d.warnf(file, 0, "folder inside %s/ is ignored", dir)
			continue
		}
		if l.ownFile(file) {
			continue // lab.yaml or the compose file, in an agents folder at the root
		}
		name, kind := sutFileKind(e.Name())
		if kind != "" {
			l.sutFiles[file] = name
		}
		if kind == "" {
			l.d.warnf(file, 0, "stray file ignored; %s/ holds <name>.conf, <name>_snappy.yaml, <name>.yaml and <name>.lab.yaml", dir)
			continue
		}
		if !validName.MatchString(name) || strings.HasSuffix(name, AsideSuffix) {
			l.d.errorf(file, 0, "SUT name %q is not valid; use letters, digits, '.', '_' and '-', start with a letter or digit, at most 63 characters, not ending in %s", name, AsideSuffix)
			continue
		}
		data, ok := l.readEntry(file, e)
		if !ok {
			continue
		}
		s := get(name)
		root, f := yamlcheck.Parse(data)
		if f != nil {
			l.d.add(file, *f)
		}
		sf := &SourceFile{Path: file, Data: data, Keys: keyDigests(root)}
		switch kind {
		case "conf":
			s.Conf = sf
			if f == nil {
				conf, fs := testflinger.CheckAgentConf(root)
				l.d.add(file, fs...)
				s.Agent = conf
			}
		case "connector":
			s.Connector = sf
			if f == nil {
				conf, fs := testflinger.CheckConnectorConf(root)
				l.d.add(file, fs...)
				s.DeviceIP = conf.DeviceIP
			}
		case "job":
			s.Job = sf
			if f == nil {
				l.d.add(file, testflinger.CheckJob(root)...)
			}
		case "override":
			s.OverrideFile = sf
			s.Override = &AgentOverride{}
			if f == nil {
				l.d.add(file, yamlcheck.Decode(root, s.Override)...)
			}
		}
	}
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		s := byName[n]
		if s.Conf == nil {
			for _, f := range []*SourceFile{s.Connector, s.Job, s.OverrideFile} {
				if f != nil {
					l.d.warnf(f.Path, 0, "no %s/%s.conf for this file, so no agent uses it; add the .conf or remove this file", dir, n)
				}
			}
			continue
		}
		l.SUTs = append(l.SUTs, s)
	}
}

// keyDigests returns a short digest of each top-level key's value of a YAML
// mapping, so a change can be reported by key.
func keyDigests(root *yaml.Node) map[string]string {
	pairs := yamlcheck.Pairs(root)
	if len(pairs) == 0 {
		return nil
	}
	out := make(map[string]string, len(pairs))
	for _, p := range pairs {
		data, err := yaml.Marshal(p.Value)
		if err != nil {
			continue
		}
		out[p.Key] = shortDigest(data)
	}
	return out
}

func shortDigest(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:4])
}
