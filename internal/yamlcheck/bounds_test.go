package yamlcheck

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// billionLaughs builds a chain of n anchors, each a list of ten aliases of
// the one before: 10^n nodes once expanded, from a few hundred bytes.
func billionLaughs(n int) string {
	var b strings.Builder
	b.WriteString("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n")
	for i := 1; i <= n; i++ {
		prev := fmt.Sprintf("*a%d", i-1)
		fmt.Fprintf(&b, "a%d: &a%d [%s]\n", i, i, strings.TrimSuffix(strings.Repeat(prev+", ", 10), ", "))
	}
	return b.String()
}

// mergeChain builds anchors whose merge keys include the anchor before
// twice: the merged mappings double at each step.
func mergeChain(n int) string {
	var b strings.Builder
	b.WriteString("m0: &m0 {k0: v}\n")
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "m%d: &m%d\n  k%d: v\n  <<: [*m%d, *m%d]\n", i, i, i, i-1, i-1)
	}
	return b.String()
}

func hugeMapping(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "k%d: v\n", i)
	}
	return b.String()
}

func TestParseBounds(t *testing.T) {
	cases := []struct {
		name, doc string
		line      int    // 0: valid
		msg       string // part of the finding
	}{
		{"self-including merge", "agents: &a\n  dir: sut\n  <<: *a\n", 3, "includes itself"},
		{"self-including merge at the top", "&a\nname: x\n<<: *a\n", 3, "includes itself"},
		{"self-including alias in a list", "a: &a [1, *a]\n", 1, "includes itself"},
		{"billion laughs", billionLaughs(9), 0, "expand to more than"},
		{"exponential merge chain", mergeChain(40), 0, "expand to more than"},
		{"deep nesting", strings.Repeat("[", 200) + strings.Repeat("]", 200) + "\n", 1, "nested deeper than"},
		{"too many nodes", "a: [" + strings.Repeat("1,", MaxNodes) + "1]\n", 1, "more than 100000 YAML nodes"},
		{"a big string aliased many times", "s: &s " + strings.Repeat("x", 100000) + "\nl: [" + strings.Repeat("*s, ", 100) + "*s]\n", 2, "expand to more than"},
		{"huge mapping", hugeMapping(MaxMappingKeys + 1), 1, "more than"},
		{"big mapping", hugeMapping(MaxMappingKeys), 0, ""},
		{"anchors used sensibly", "x-common: &common\n  restart: always\n  image: redis\nservices:\n  a:\n    <<: *common\n  b:\n    <<: *common\n    image: other\n", 0, ""},
		{"alias of a scalar", "a: &v 1\nb: *v\nc: *v\n", 0, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			root, f := Parse([]byte(tc.doc))
			if d := time.Since(start); d > 2*time.Second {
				t.Logf("Parse took %s", d) // a figure for the log; bounds are checked below
			}
			if tc.msg == "" {
				if f != nil {
					t.Fatalf("valid document refused: %+v", *f)
				}
				if root == nil {
					t.Fatal("no root")
				}
				// Walking a bounded tree terminates.
				_ = Pairs(root)
				return
			}
			if f == nil {
				t.Fatalf("accepted; want a finding with %q", tc.msg)
			}
			if !strings.Contains(f.Msg, tc.msg) {
				t.Errorf("finding %q; want it to contain %q", f.Msg, tc.msg)
			}
			if tc.line > 0 && f.Line != tc.line {
				t.Errorf("finding at line %d; want %d (%s)", f.Line, tc.line, f.Msg)
			}
			if f.Line == 0 {
				t.Errorf("finding without a line: %s", f.Msg)
			}
		})
	}
}

// Merges of legitimate size pass, and the count says how far aliases may
// go before a document is refused.
func TestParseExpansionLimit(t *testing.T) {
	if _, f := Parse([]byte(billionLaughs(3))); f != nil { // about 12,000 nodes
		t.Fatalf("10^3 expanded leaves refused: %s", f.Msg)
	}
	if _, f := Parse([]byte(billionLaughs(5))); f == nil { // about 1.2 million nodes
		t.Fatal("10^5 expanded leaves accepted")
	}
}
