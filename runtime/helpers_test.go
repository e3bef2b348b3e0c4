package runtime_test

import (
	"fmt"

	"github.com/docker/docker/api/types/volume"

	"github.com/labsync/labsync/internal/testenv"
)

func fmtAny(v any) string { return fmt.Sprint(v) }

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func volumeOpts(name string) volume.CreateOptions {
	return volume.CreateOptions{Name: name, Labels: map[string]string{testenv.LabelTest: "foreign"}}
}
