package gitsource

import (
	"io"
	"io/fs"
	"path"
	"sort"
	"sync"
	"time"

	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
)

// treeFS is a git tree as an fs.FS (and fs.ReadDirFS). Symbolic links are
// reported as such and never followed.
type treeFS struct {
	repo *git.Repository
	root *object.Tree
	mu   *sync.RWMutex // the Source's: a fetch must not run under a read
}

var (
	_ fs.FS        = (*treeFS)(nil)
	_ fs.ReadDirFS = (*treeFS)(nil)
)

func (t *treeFS) Open(name string) (fs.File, error) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	}
	if name == "." {
		return &dirFile{info: dirInfo("."), tree: t.root, fsys: t}, nil
	}
	e, err := t.root.FindEntry(name)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	if e.Mode == filemode.Dir {
		sub, err := t.root.Tree(name)
		if err != nil {
			return nil, &fs.PathError{Op: "open", Path: name, Err: err}
		}
		return &dirFile{info: dirInfo(path.Base(name)), tree: sub, fsys: t}, nil
	}
	blob, err := t.repo.BlobObject(e.Hash)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	r, err := blob.Reader()
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	return &blobFile{ReadCloser: r, mu: t.mu, info: fileInfo{name: path.Base(name), size: blob.Size, mode: goMode(e.Mode)}}, nil
}

func (t *treeFS) ReadDir(name string) ([]fs.DirEntry, error) {
	f, err := t.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	d, ok := f.(*dirFile)
	if !ok {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: fs.ErrInvalid}
	}
	return d.ReadDir(-1)
}

func goMode(m filemode.FileMode) fs.FileMode {
	switch m {
	case filemode.Dir:
		return fs.ModeDir | 0o755
	case filemode.Executable:
		return 0o755
	case filemode.Symlink:
		return fs.ModeSymlink | 0o777
	case filemode.Submodule:
		return fs.ModeIrregular
	}
	return 0o644
}

type fileInfo struct {
	name string
	size int64
	mode fs.FileMode
}

func dirInfo(name string) fileInfo { return fileInfo{name: name, mode: fs.ModeDir | 0o755} }

func (i fileInfo) Name() string       { return i.name }
func (i fileInfo) Size() int64        { return i.size }
func (i fileInfo) Mode() fs.FileMode  { return i.mode }
func (i fileInfo) ModTime() time.Time { return time.Time{} }
func (i fileInfo) IsDir() bool        { return i.mode.IsDir() }
func (i fileInfo) Sys() any           { return nil }

type blobFile struct {
	io.ReadCloser
	mu   *sync.RWMutex
	info fileInfo
}

func (f *blobFile) Read(p []byte) (int, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.ReadCloser.Read(p)
}

func (f *blobFile) Stat() (fs.FileInfo, error) { return f.info, nil }

type dirFile struct {
	info    fileInfo
	tree    *object.Tree
	fsys    *treeFS
	entries []fs.DirEntry // sorted, made on the first ReadDir
	offset  int
}

func (d *dirFile) Stat() (fs.FileInfo, error) { return d.info, nil }
func (d *dirFile) Read([]byte) (int, error) {
	return 0, &fs.PathError{Op: "read", Path: d.info.name, Err: fs.ErrInvalid}
}
func (d *dirFile) Close() error { return nil }

// ReadDir implements fs.ReadDirFile.
func (d *dirFile) ReadDir(n int) ([]fs.DirEntry, error) {
	if d.entries == nil {
		d.entries = make([]fs.DirEntry, 0, len(d.tree.Entries))
		for _, e := range d.tree.Entries {
			d.entries = append(d.entries, &dirEntry{e: e, fsys: d.fsys})
		}
		sort.Slice(d.entries, func(i, j int) bool { return d.entries[i].Name() < d.entries[j].Name() })
	}
	rest := d.entries[d.offset:]
	if n <= 0 {
		d.offset = len(d.entries)
		return rest, nil
	}
	if len(rest) == 0 {
		return nil, io.EOF
	}
	n = min(n, len(rest))
	d.offset += n
	return rest[:n], nil
}

type dirEntry struct {
	e    object.TreeEntry
	fsys *treeFS
}

func (e *dirEntry) Name() string      { return e.e.Name }
func (e *dirEntry) IsDir() bool       { return e.e.Mode == filemode.Dir }
func (e *dirEntry) Type() fs.FileMode { return goMode(e.e.Mode).Type() }
func (e *dirEntry) Info() (fs.FileInfo, error) {
	info := fileInfo{name: e.e.Name, mode: goMode(e.e.Mode)}
	if !info.IsDir() {
		e.fsys.mu.RLock()
		defer e.fsys.mu.RUnlock()
		blob, err := e.fsys.repo.BlobObject(e.e.Hash)
		if err != nil {
			return nil, err
		}
		info.size = blob.Size
	}
	return info, nil
}
