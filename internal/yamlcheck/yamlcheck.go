// Package yamlcheck holds the small helpers that the lab and testflinger
// validators share: parsing YAML into a node tree that keeps line numbers,
// walking mappings, checking scalar types and suggesting the key a user
// probably meant.
package yamlcheck

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Finding is one problem found in a YAML document, located by line.
type Finding struct {
	Line    int
	Warning bool
	Msg     string
}

// Errorf returns an error finding at the line of n.
func Errorf(n *yaml.Node, format string, args ...any) Finding {
	return Finding{Line: line(n), Msg: fmt.Sprintf(format, args...)}
}

// Warnf returns a warning finding at the line of n.
func Warnf(n *yaml.Node, format string, args ...any) Finding {
	return Finding{Line: line(n), Warning: true, Msg: fmt.Sprintf(format, args...)}
}

func line(n *yaml.Node) int {
	if n == nil {
		return 0
	}
	return n.Line
}

// yaml.v3 reports syntax errors only as text ("yaml: line 7: ..."); this is
// the one place that reads a line number out of a message, because the
// library offers no typed error for it.
var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// Parse decodes data into a document node under DefaultBounds. An empty
// document gives a nil node and no finding. A document with several YAML
// documents is refused, and so is one past its bounds: too many nodes, an
// alias that includes itself, aliases expanding too far, nesting too deep
// or a mapping with too many keys. Every node tree Parse returns can be
// walked and decoded, aliases followed, in bounded time and memory.
func Parse(data []byte) (*yaml.Node, *Finding) {
	return ParseBounded(data, DefaultBounds())
}

// ParseBounded is Parse under other bounds.
func ParseBounded(data []byte, bounds Bounds) (*yaml.Node, *Finding) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		f := Finding{Line: 1, Msg: "invalid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")}
		if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
			f.Line, _ = strconv.Atoi(m[1])
			f.Msg = "invalid YAML: " + m[2]
		}
		return nil, &f
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		f := Errorf(&extra, "more than one YAML document; keep one document per file")
		return nil, &f
	}
	if len(doc.Content) == 0 {
		return nil, nil
	}
	if f := checkBounds(doc.Content[0], bounds); f != nil {
		return nil, f
	}
	return doc.Content[0], nil
}

// Pair is one key and value of a mapping node.
type Pair struct {
	Key   string
	KeyN  *yaml.Node
	Value *yaml.Node
}

// Pairs returns the entries of a mapping node, resolving aliases. It returns
// nil for a node that is not a mapping.
func Pairs(n *yaml.Node) []Pair {
	n = Resolve(n)
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	out := make([]Pair, 0, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], Resolve(n.Content[i+1])
		if k.Tag == "!!merge" {
			out = append(out, Pairs(v)...)
			continue
		}
		out = append(out, Pair{Key: k.Value, KeyN: k, Value: v})
	}
	return out
}

// Resolve follows alias nodes to their anchors.
func Resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

// IsMap reports whether n is a mapping.
func IsMap(n *yaml.Node) bool { n = Resolve(n); return n != nil && n.Kind == yaml.MappingNode }

// IsSeq reports whether n is a sequence.
func IsSeq(n *yaml.Node) bool { n = Resolve(n); return n != nil && n.Kind == yaml.SequenceNode }

// IsNull reports whether n is absent or an explicit null.
func IsNull(n *yaml.Node) bool {
	n = Resolve(n)
	return n == nil || (n.Kind == yaml.ScalarNode && n.Tag == "!!null")
}

// IsString reports whether n is a scalar that YAML reads as a string.
func IsString(n *yaml.Node) bool {
	n = Resolve(n)
	return n != nil && n.Kind == yaml.ScalarNode && n.Tag == "!!str"
}

// IsInt reports whether n is an integer scalar.
func IsInt(n *yaml.Node) bool {
	n = Resolve(n)
	return n != nil && n.Kind == yaml.ScalarNode && n.Tag == "!!int"
}

// IsBool reports whether n is a boolean scalar.
func IsBool(n *yaml.Node) bool {
	n = Resolve(n)
	return n != nil && n.Kind == yaml.ScalarNode && n.Tag == "!!bool"
}

// IsScalar reports whether n is any non-null scalar.
func IsScalar(n *yaml.Node) bool {
	n = Resolve(n)
	return n != nil && n.Kind == yaml.ScalarNode && n.Tag != "!!null"
}

// Items returns the elements of a sequence node.
func Items(n *yaml.Node) []*yaml.Node {
	n = Resolve(n)
	if n == nil || n.Kind != yaml.SequenceNode {
		return nil
	}
	out := make([]*yaml.Node, len(n.Content))
	for i, c := range n.Content {
		out[i] = Resolve(c)
	}
	return out
}

// Describe names the YAML type of n for error messages.
func Describe(n *yaml.Node) string {
	n = Resolve(n)
	switch {
	case n == nil:
		return "nothing"
	case n.Kind == yaml.MappingNode:
		return "a mapping"
	case n.Kind == yaml.SequenceNode:
		return "a list"
	}
	switch n.Tag {
	case "!!str":
		return fmt.Sprintf("the string %q", n.Value)
	case "!!int":
		return "the number " + n.Value
	case "!!float":
		return "the number " + n.Value
	case "!!bool":
		return "the boolean " + n.Value
	case "!!null":
		return "null"
	}
	return n.Value
}

// UnknownKey formats the message for a key that is not in known, with a
// suggestion when one is close enough.
func UnknownKey(key string, known []string) string {
	if s := Suggest(key, known); s != "" {
		return fmt.Sprintf("unknown key '%s' (did you mean '%s'?)", key, s)
	}
	sorted := append([]string(nil), known...)
	sort.Strings(sorted)
	return fmt.Sprintf("unknown key '%s' (known keys: %s)", key, strings.Join(sorted, ", "))
}

// Suggest returns the entry of known closest to key, or "" when none is
// within a small edit distance.
func Suggest(key string, known []string) string {
	best, bestD := "", 1<<30
	for _, k := range known {
		d := distance(strings.ToLower(key), strings.ToLower(k))
		if d < bestD || (d == bestD && k < best) {
			best, bestD = k, d
		}
	}
	limit := 2
	if len(key) > 8 {
		limit = 3
	}
	if bestD <= limit || (best != "" && (strings.HasPrefix(best, key) || strings.HasPrefix(key, best))) {
		return best
	}
	return ""
}

// distance is the Levenshtein distance of a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
