package yamlcheck

import (
	"fmt"

	"gopkg.in/yaml.v3"
)

// Bounds on what a document may expand to. Aliases and merge keys are
// followed by every walker of a node tree, so an alias that includes its
// own anchor would loop forever and a chain of aliases can multiply a few
// hundred bytes into billions of nodes. Parse refuses both before anyone
// walks the tree.
const (
	// MaxAliasNodes is the number of nodes that aliases (and so merge
	// keys) may add to a document once expanded.
	MaxAliasNodes = 100_000
	// MaxDepth is the deepest nesting allowed, aliases followed.
	MaxDepth = 100
	// MaxMappingKeys bounds the keys of one mapping: YAML libraries
	// check for duplicate keys in quadratic time.
	MaxMappingKeys = 2000
)

// bounder computes, once per node, its size and depth with aliases
// expanded, and stops at the first node past a bound.
type bounder struct {
	size   map[*yaml.Node]int64
	depth  map[*yaml.Node]int
	inWork map[*yaml.Node]bool
	// added counts the nodes aliases add, in document order.
	added int64
	bad   *Finding
}

// checkBounds returns a finding when root includes itself through an alias,
// expands past MaxAliasNodes, nests deeper than MaxDepth or has a mapping
// of more than MaxMappingKeys keys.
func checkBounds(root *yaml.Node) *Finding {
	b := &bounder{size: map[*yaml.Node]int64{}, depth: map[*yaml.Node]int{}, inWork: map[*yaml.Node]bool{}}
	b.measure(root)
	if b.bad == nil {
		b.count(root)
	}
	return b.bad
}

// measure fills size and depth of n and everything below it.
func (b *bounder) measure(n *yaml.Node) (int64, int) {
	if n == nil || b.bad != nil {
		return 0, 0
	}
	if s, ok := b.size[n]; ok {
		return s, b.depth[n]
	}
	if b.inWork[n] {
		return 0, 0 // reported by the alias that leads here
	}
	b.inWork[n] = true
	defer delete(b.inWork, n)
	var size int64
	var depth int
	if n.Kind == yaml.AliasNode {
		if n.Alias != nil && b.inWork[n.Alias] {
			f := Errorf(n, "alias *%s includes itself: it is inside the anchor &%s it refers to (line %d); write the values out instead", n.Value, n.Value, n.Alias.Line)
			b.bad = &f
			return 0, 0
		}
		size, depth = b.measure(n.Alias)
	} else {
		if n.Kind == yaml.MappingNode && len(n.Content)/2 > MaxMappingKeys {
			f := Errorf(n, "a mapping with %d keys, more than the %d labsync reads; split it", len(n.Content)/2, MaxMappingKeys)
			b.bad = &f
			return 0, 0
		}
		size = 1
		for _, c := range n.Content {
			s, d := b.measure(c)
			size = min(size+s, 1<<62) // saturates: sizes can be exponential
			depth = max(depth, d)
		}
		depth++
	}
	if b.bad != nil {
		return 0, 0
	}
	if depth > MaxDepth {
		f := Errorf(n, "the document is nested deeper than %d levels (aliases followed); flatten it", MaxDepth)
		b.bad = &f
		return 0, 0
	}
	b.size[n], b.depth[n] = size, depth
	return size, depth
}

// count walks the document as written and adds up what each alias
// expands to, stopping at the alias that goes past MaxAliasNodes.
func (b *bounder) count(n *yaml.Node) {
	if n == nil || b.bad != nil {
		return
	}
	if n.Kind == yaml.AliasNode {
		b.added += b.size[n]
		if b.added > MaxAliasNodes {
			f := Errorf(n, "aliases and merge keys expand to more than %d nodes (here at *%s); write the values out or use fewer levels of aliases", MaxAliasNodes, n.Value)
			b.bad = &f
		}
		return
	}
	for _, c := range n.Content {
		b.count(c)
	}
}

// String describes a finding for logs and tests.
func (f Finding) String() string {
	return fmt.Sprintf("line %d: %s", f.Line, f.Msg)
}
