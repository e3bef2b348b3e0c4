package server

import (
	"embed"
	"html/template"
	"net/http"
	"time"
)

//go:embed templates/status.html
var templates embed.FS

var page = template.Must(template.New("status.html").Funcs(template.FuncMap{
	"short": shortSHA,
	"ago": func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		d := time.Since(t).Round(time.Second)
		return d.String() + " ago"
	},
	"ms": func(ms int64) string { return (time.Duration(ms) * time.Millisecond).String() },
}).ParseFS(templates, "templates/status.html"))

type pageData struct {
	Status  StatusView
	Objects []ObjectView
	Runs    []RunView
	Refresh int
	Now     time.Time
}

func (s *Server) handlePage(w http.ResponseWriter, r *http.Request) {
	st := s.opts.Status.Status()
	runs := runViews(s.opts.Status.Runs())
	if len(runs) > 15 {
		runs = runs[:15]
	}
	data := pageData{Status: statusView(st), Objects: objectsView(st), Runs: runs, Refresh: 10, Now: time.Now()}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := page.Execute(w, data); err != nil {
		s.log.Error("status page", "err", err)
	}
}
