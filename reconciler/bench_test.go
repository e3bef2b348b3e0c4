package reconciler_test

import (
	"fmt"
	"testing"
	"testing/fstest"

	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/reconciler"
)

// BenchmarkPlan500 measures load, compile and plan of a 500-agent lab
// against a host that already runs it (no Docker: the observed state is
// made from the desired one).
func BenchmarkPlan500(b *testing.B) {
	fsys := planLab()
	for i := 0; i < 500; i++ {
		sut := fmt.Sprintf("dut%04d", i)
		fsys["sut/"+sut+".conf"] = &fstest.MapFile{Data: []byte(agentConf(sut))}
		fsys["sut/"+sut+"_snappy.yaml"] = &fstest.MapFile{Data: []byte(fmt.Sprintf("device_ip: 10.1.%d.%d\n", i/256, i%256))}
	}
	l, err := lab.Load(fsys, lab.LoadOptions{})
	if err != nil {
		b.Fatal(err)
	}
	observed := observedFrom(lab.Compile(l, lab.CompileOptions{}))
	b.ReportAllocs()
	for b.Loop() {
		l, err := lab.Load(fsys, lab.LoadOptions{})
		if err != nil {
			b.Fatal(err)
		}
		p := reconciler.Plan(lab.Compile(l, lab.CompileOptions{}), observed, reconciler.PlanOptions{})
		if !p.Empty() {
			b.Fatal(p.Summary())
		}
	}
}
