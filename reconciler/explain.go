package reconciler

import (
	"fmt"
	"sort"
	"strings"

	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/runtime"
)

// specChanged is the reason given when the fields that differ are unknown.
const specChanged = "spec changed"

// explain says why an observed container differs from its spec, or returns
// nil when it does not.
func explain(obs *runtime.ObservedContainer, spec *lab.ContainerSpec, images map[string]string) []string {
	var reasons []string
	if !sameSpec(obs, spec) {
		reasons = diffFields(obs.Fields, spec.Fields, obs, spec)
		if len(reasons) == 0 {
			reasons = []string{specChanged}
		}
	} else if spec.BuildTag == "" {
		// A named image may have been replaced under the same tag.
		if id, ok := images[spec.Image]; ok && obs.ImageID != "" && id != obs.ImageID {
			reasons = append(reasons, fmt.Sprintf("image %s updated (%s -> %s)", spec.Image, shortID(obs.ImageID), shortID(id)))
		}
	}
	return reasons
}

// sameSpec reports whether a container was made from spec: its hash label
// is the spec hash, or the schema-1 hash for a container made before the
// spec hash covered file digests instead of content.
func sameSpec(obs *runtime.ObservedContainer, spec *lab.ContainerSpec) bool {
	if obs.Hash == spec.Hash {
		return true
	}
	return obs.Schema == "1" && obs.Hash == spec.LegacyHash()
}

func shortID(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// diffFields turns differing field digests into readable reasons:
// "sut/foo.conf changed (job_queues)", "image changed (a -> b)".
func diffFields(old, cur map[string]string, obs *runtime.ObservedContainer, spec *lab.ContainerSpec) []string {
	if len(old) == 0 {
		return []string{"spec changed (the container was made by an older labsync)"}
	}
	fileKeys := map[string][]string{}
	fileState := map[string]string{}
	var fields []string
	seen := map[string]bool{}
	for _, k := range append(lab.FieldNames(old), lab.FieldNames(cur)...) {
		if seen[k] {
			continue
		}
		seen[k] = true
		ov, inOld := old[k]
		nv, inNew := cur[k]
		if inOld && inNew && ov == nv {
			continue
		}
		name, isFile := strings.CutPrefix(k, "file:")
		if k == "container_name" {
			continue // said by the plan as a rename
		}
		if !isFile {
			fields = append(fields, k)
			continue
		}
		src, key, hasKey := strings.Cut(name, "#")
		switch {
		case hasKey:
			fileKeys[src] = append(fileKeys[src], key)
		case !inOld:
			fileState[src] = "added"
		case !inNew:
			fileState[src] = "removed"
		default:
			if fileState[src] == "" {
				fileState[src] = "changed"
			}
		}
	}
	var reasons []string
	files := map[string]bool{}
	for f := range fileKeys {
		files[f] = true
	}
	for f := range fileState {
		files[f] = true
	}
	for _, f := range sortedSet(files) {
		state := fileState[f]
		if state == "" {
			state = "changed"
		}
		keys := fileKeys[f]
		sort.Strings(keys)
		if len(keys) > 0 && state == "changed" {
			reasons = append(reasons, fmt.Sprintf("%s changed (%s)", f, strings.Join(keys, ", ")))
		} else {
			reasons = append(reasons, fmt.Sprintf("%s %s", f, state))
		}
	}
	sort.Strings(fields)
	var other []string
	for _, f := range fields {
		if f == "image" {
			if spec.BuildTag != "" && obs.Image != "" && strings.HasPrefix(obs.Image, imageRepo(spec.Image)+":") {
				reasons = append(reasons, fmt.Sprintf("image rebuilt: its build context changed (%s -> %s)", imageTag(obs.Image), imageTag(spec.Image)))
			} else {
				reasons = append(reasons, fmt.Sprintf("image changed (%s -> %s)", obs.Image, spec.Image))
			}
			continue
		}
		other = append(other, f)
	}
	if len(other) > 0 {
		reasons = append(reasons, fmt.Sprintf("%s changed", strings.Join(other, ", ")))
	}
	return reasons
}

func imageRepo(ref string) string {
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		return ref[:i]
	}
	return ref
}

func imageTag(ref string) string { return strings.TrimPrefix(ref, imageRepo(ref)+":") }

func sortedSet(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
