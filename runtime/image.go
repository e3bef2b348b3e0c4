package runtime

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
	"time"

	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/pkg/jsonmessage"

	"github.com/labsync/labsync/internal/redact"
	"github.com/labsync/labsync/lab"
)

// BuildImage builds img from its repository context with the classic
// builder, which needs no registry for FROM scratch or local base images.
// Progress goes to the logger line by line. Every line and the engine's
// error are redacted once, here, before they are logged or carried in the
// error: build steps may print secrets.
func (c *Client) BuildImage(ctx context.Context, labName string, img lab.ImageSpec) error {
	b := img.Context
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeContext(pw, img.Source, b)) }()
	defer pr.Close()
	args := map[string]*string{}
	for k, v := range b.Args {
		args[k] = &v
	}
	resp, err := c.api.ImageBuild(ctx, pr, build.ImageBuildOptions{
		Tags:        []string{img.Tag},
		Dockerfile:  b.Dockerfile,
		BuildArgs:   args,
		Remove:      true,
		ForceRemove: true,
		Version:     build.BuilderV1,
		// The classic builder adds one layer step per label: keep two.
		Labels: map[string]string{
			LabelManaged: "true",
			LabelLab:     labName,
		},
	})
	if err != nil {
		return fmt.Errorf("build %s: %w", img.Tag, err)
	}
	defer resp.Body.Close()
	log := c.log.With("image", img.Tag)
	log.Info("building image", "context", b.Dir, "files", len(b.Files))
	start := time.Now()
	dec := json.NewDecoder(resp.Body)
	var last []string
	for {
		var m jsonmessage.JSONMessage
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return fmt.Errorf("build %s: read progress: %w", img.Tag, err)
		}
		if m.Error != nil {
			return fmt.Errorf("build %s: %s%s", img.Tag, redact.String(m.Error.Message), tailNote(last))
		}
		for _, line := range strings.Split(strings.TrimRight(m.Stream, "\n"), "\n") {
			if line = strings.TrimSpace(line); line != "" {
				line = redact.String(line)
				log.Info("build", "line", line)
				last = append(last, line)
				if len(last) > 5 {
					last = last[1:]
				}
			}
		}
	}
	log.Info("image built", "duration", time.Since(start).Round(time.Millisecond))
	return nil
}

// tailNote renders the last build lines, already redacted, for an error.
func tailNote(lines []string) string {
	if len(lines) == 0 {
		return ""
	}
	return " (after: " + strings.Join(lines, " | ") + ")"
}

// writeContext writes the build context as a tar stream.
func writeContext(w io.Writer, fsys fs.FS, b *lab.BuildContext) error {
	tw := tar.NewWriter(w)
	for _, f := range b.Files {
		mode := int64(0o644)
		if f.Mode.Perm()&0o111 != 0 {
			mode = 0o755
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.Path, Mode: mode, Size: f.Size, ModTime: time.Unix(0, 0)}); err != nil {
			return err
		}
		r, err := fsys.Open(path.Join(b.Dir, f.Path))
		if err != nil {
			return err
		}
		n, err := io.Copy(tw, r)
		r.Close()
		if err != nil {
			return err
		}
		if n != f.Size {
			return fmt.Errorf("%s changed while the context was read", f.Path)
		}
	}
	return tw.Close()
}
