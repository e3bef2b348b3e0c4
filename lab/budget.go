package lab

import "fmt"

// budget counts what loading has read from the repository. Each file and
// folder is counted once: Lab caches what it read.
type budget struct {
	maxFiles int
	maxBytes int64
	files    int
	bytes    int64
	spent    bool            // the error was reported
	counted  map[string]bool // files counted, so a file listed then read counts once
}

// spend charges files and bytes read at name to the budget. Past it, the
// first call reports an error and every call returns false: nothing more
// is read.
func (l *Lab) spend(name string, files int, bytes int64) bool {
	b := &l.budget
	if b.spent {
		return false
	}
	if files == 1 {
		if b.counted == nil {
			b.counted = map[string]bool{}
		}
		if b.counted[name] {
			files = 0
		}
		b.counted[name] = true
	}
	b.files += files
	b.bytes += bytes
	switch {
	case b.files > b.maxFiles:
		l.d.labErrorf(name, 0, "the lab reads more than %d files from the repository (SUT files, mounted folders and build contexts); nothing past this one was read. Keep large data out of the lab repository, or exclude it from build contexts with .dockerignore", b.maxFiles)
	case b.bytes > b.maxBytes:
		l.d.labErrorf(name, 0, "the lab reads more than %d bytes from the repository (SUT files, mounted folders and build contexts); nothing past this one was read. Keep large data out of the lab repository, or exclude it from build contexts with .dockerignore", b.maxBytes)
	default:
		return true
	}
	b.spent = true
	return false
}

// capPerFile keeps the first max diagnostics of each file (ds is sorted by
// file) and replaces the rest with one that counts them.
func (ds Diagnostics) capPerFile(max int) Diagnostics {
	out := ds[:0:0]
	for i := 0; i < len(ds); {
		j := i
		for j < len(ds) && ds[j].File == ds[i].File {
			j++
		}
		if j-i <= max {
			out = append(out, ds[i:j]...)
		} else {
			out = append(out, ds[i:i+max]...)
			rest := Diagnostic{File: ds[i].File, Severity: SeverityWarning, SUT: ds[i].SUT}
			errs := 0
			for _, d := range ds[i+max : j] {
				if d.Severity == SeverityError {
					errs++
				}
			}
			if errs > 0 {
				rest.Severity = SeverityError
			}
			rest.Message = fmt.Sprintf("%d more problems in this file are not shown (%d of them errors); fix the ones above and validate again", j-i-max, errs)
			out = append(out, rest)
		}
		i = j
	}
	return out
}
