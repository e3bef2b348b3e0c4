package lab_test

import (
	"strings"
	"testing"
	"testing/fstest"

	"github.com/labsync/labsync/lab"
)

// Relative bind mounts of folders the repository does not hold (or holds
// only as an empty placeholder) are runtime data: per-lab host folders
// under labsync's data folder, as compose does with its project folder.
func TestRelativeDataMountsAreHostFolders(t *testing.T) {
	fsys := fstest.MapFS{
		"sut/alpha.conf":                 {Data: []byte(confAlpha)},
		"stack/jenkins/backups/.gitkeep": {Data: []byte("")},
		"stack/conf/app.ini":             {Data: []byte("x=1\n")},
		"stack/compose.yaml": {Data: []byte("services:\n  jenkins:\n    image: jenkins\n    volumes:\n" +
			"      - ./log:/var/log/jenkins\n      - ./jenkins/backups:/backups:ro\n      - ./conf:/etc/app\n")},
	}
	l, err := lab.Load(fsys, lab.LoadOptions{DefaultName: "lab1", DataRoot: "/srv/labsync"})
	if err != nil {
		t.Fatalf("%v\n%s", err, l.Diagnostics)
	}
	var got []string
	for _, m := range l.DataMounts {
		got = append(got, m.Service+" "+m.Source+" "+m.HostPath+" "+m.Target)
	}
	want := []string{
		"jenkins stack/jenkins/backups /srv/labsync/labs/lab1/stack/jenkins/backups /backups",
		"jenkins stack/log /srv/labsync/labs/lab1/stack/log /var/log/jenkins",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("data mounts:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	d := lab.Compile(l, lab.CompileOptions{})
	var mounts, files []string
	for _, c := range d.Containers {
		if c.Name != "jenkins" {
			continue
		}
		for _, m := range c.Mounts {
			mounts = append(mounts, m.Source+":"+m.Target)
			if !m.Create {
				t.Errorf("%s is not created when missing", m.Source)
			}
		}
		for _, f := range c.Files {
			files = append(files, f.Path)
		}
	}
	if len(mounts) != 2 || strings.Join(files, ",") != "/etc/app/app.ini" {
		t.Errorf("mounts %v, files %v", mounts, files)
	}

	// lab.yaml may name the folder, within the host policy.
	fsys["lab.yaml"] = &fstest.MapFile{Data: []byte("data_dir: /srv/lab-data\n")}
	if _, err := lab.Load(fsys, lab.LoadOptions{DefaultName: "lab1"}); err == nil || !strings.Contains(err.Error(), "--allow-bind-paths") {
		t.Fatalf("data_dir outside the policy: %v", err)
	}
	pol := lab.DefaultPolicy()
	pol.BindPaths = []string{"/srv"}
	l, err = lab.Load(fsys, lab.LoadOptions{DefaultName: "lab1", Policy: &pol})
	if err != nil || l.DataMounts[0].HostPath != "/srv/lab-data/stack/jenkins/backups" {
		t.Fatalf("%v %+v", err, l.DataMounts)
	}
}
