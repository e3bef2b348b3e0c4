package yamlcheck

import (
	"fmt"

	"gopkg.in/yaml.v3"
)

// Bounds on what a document may hold and expand to. Aliases and merge keys
// are followed by every walker of a node tree, so an alias that includes
// its own anchor would loop forever and a chain of aliases can multiply a
// few hundred bytes into billions of nodes; and every consumer of a tree
// (decoding, re-encoding, compose-go) spends memory per node. Parse refuses
// a document past its bounds before anyone walks it.
type Bounds struct {
	// MaxNodes bounds the nodes of the document as written.
	MaxNodes int
	// MaxAliasNodes bounds the nodes that aliases (and so merge keys) add
	// once expanded; MaxAliasBytes the bytes of their scalars.
	MaxAliasNodes int
	MaxAliasBytes int64
	// MaxDepth is the deepest nesting allowed, aliases followed.
	MaxDepth int
	// MaxMappingKeys bounds the keys of one mapping: YAML libraries check
	// for duplicate keys in quadratic time.
	MaxMappingKeys int
}

// The default bounds, for lab files.
const (
	MaxNodes       = 100_000
	MaxAliasNodes  = 100_000
	MaxAliasBytes  = 4 << 20
	MaxDepth       = 100
	MaxMappingKeys = 2000
)

// DefaultBounds are the bounds of Parse.
func DefaultBounds() Bounds {
	return Bounds{MaxNodes: MaxNodes, MaxAliasNodes: MaxAliasNodes, MaxAliasBytes: MaxAliasBytes, MaxDepth: MaxDepth, MaxMappingKeys: MaxMappingKeys}
}

// bounder computes, once per node, its size and depth with aliases
// expanded, and stops at the first node past a bound.
type bounder struct {
	Bounds
	size   map[*yaml.Node]int64
	bytes  map[*yaml.Node]int64
	depth  map[*yaml.Node]int
	inWork map[*yaml.Node]bool
	// added and addedBytes count the nodes and scalar bytes aliases add,
	// in document order.
	added, addedBytes int64
	bad               *Finding
}

// checkBounds returns a finding when root has more than MaxNodes nodes,
// includes itself through an alias, expands past MaxAliasNodes, nests
// deeper than MaxDepth or has a mapping of more than MaxMappingKeys keys.
func checkBounds(root *yaml.Node, bounds Bounds) *Finding {
	if n, last := countNodes(root, bounds.MaxNodes); n > bounds.MaxNodes {
		f := Errorf(last, "the document has more than %d YAML nodes, more than labsync reads; split it or write less", bounds.MaxNodes)
		return &f
	}
	b := &bounder{Bounds: bounds, size: map[*yaml.Node]int64{}, bytes: map[*yaml.Node]int64{}, depth: map[*yaml.Node]int{}, inWork: map[*yaml.Node]bool{}}
	b.measure(root)
	if b.bad == nil {
		b.count(root)
	}
	return b.bad
}

// measure fills size, bytes and depth of n and everything below it.
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
	var size, bytes int64
	var depth int
	if n.Kind == yaml.AliasNode {
		if n.Alias != nil && b.inWork[n.Alias] {
			f := Errorf(n, "alias *%s includes itself: it is inside the anchor &%s it refers to (line %d); write the values out instead", n.Value, n.Value, n.Alias.Line)
			b.bad = &f
			return 0, 0
		}
		size, depth = b.measure(n.Alias)
		bytes = b.bytes[n.Alias]
	} else {
		if n.Kind == yaml.MappingNode && len(n.Content)/2 > b.MaxMappingKeys {
			f := Errorf(n, "a mapping with %d keys, more than the %d labsync reads; split it", len(n.Content)/2, b.MaxMappingKeys)
			b.bad = &f
			return 0, 0
		}
		size, bytes = 1, int64(len(n.Value))
		for _, c := range n.Content {
			s, d := b.measure(c)
			size = min(size+s, 1<<62) // saturates: sizes can be exponential
			bytes = min(bytes+b.bytes[c], 1<<62)
			depth = max(depth, d)
		}
		depth++
	}
	if b.bad != nil {
		return 0, 0
	}
	b.bytes[n] = bytes
	if depth > b.MaxDepth {
		f := Errorf(n, "the document is nested deeper than %d levels (aliases followed); flatten it", b.MaxDepth)
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
		b.addedBytes += b.bytes[n]
		switch {
		case b.added > int64(b.MaxAliasNodes):
			f := Errorf(n, "aliases and merge keys expand to more than %d nodes (here at *%s); write the values out or use fewer levels of aliases", b.MaxAliasNodes, n.Value)
			b.bad = &f
		case b.addedBytes > b.MaxAliasBytes:
			f := Errorf(n, "aliases and merge keys expand to more than %d bytes (here at *%s); write the values out or use fewer aliases", b.MaxAliasBytes, n.Value)
			b.bad = &f
		}
		return
	}
	for _, c := range n.Content {
		b.count(c)
	}
}

// countNodes counts the nodes of the tree as written (aliases not
// followed), stopping past max; it returns the count and the last node
// counted.
func countNodes(root *yaml.Node, max int) (int, *yaml.Node) {
	n, last := 0, root
	stack := []*yaml.Node{root}
	for len(stack) > 0 && n <= max {
		x := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		n++
		last = x
		for i := len(x.Content) - 1; i >= 0; i-- {
			stack = append(stack, x.Content[i])
		}
	}
	return n, last
}

// String describes a finding for logs and tests.
func (f Finding) String() string {
	return fmt.Sprintf("line %d: %s", f.Line, f.Msg)
}
